"""imagedb, the lab's image database: its schema and every query on it (`store.ImageDB`),
values always as parameters, exactly-once in SQL. Imports only the foundations."""
