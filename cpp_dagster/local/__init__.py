"""The local deployment: the embedded PostgreSQL (`postgres`, the only place one is
started), the environment it gives the Dagster processes (`environment`), and the UI
process (`ui`, `dagster dev`). Used by `make demo`, `make dev` and the tests; never by a
production pod."""
