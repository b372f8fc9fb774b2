"""One PostgreSQL transaction, the way every store of the project talks to its database."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import psycopg2
import psycopg2.extras


@contextmanager
def transaction(url: str) -> Iterator[psycopg2.extras.RealDictCursor]:
    """A dict cursor in one transaction: committed on success, rolled back on error;
    the connection is closed either way."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            yield cur
    finally:
        conn.close()


class Store:
    """A store over one PostgreSQL database: `_cursor()` opens one transaction, and
    `apply_schema()` runs the `schema.sql` of the package named by SCHEMA_PACKAGE."""

    SCHEMA_PACKAGE: str

    def __init__(self, url: str):
        self.url = url

    def _cursor(self):
        return transaction(self.url)

    def apply_schema(self) -> None:
        ddl = resources.files(self.SCHEMA_PACKAGE).joinpath("schema.sql").read_text()
        with self._cursor() as cur:
            cur.execute(ddl)
