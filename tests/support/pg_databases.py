"""Databases of a test's own on the session's embedded PostgreSQL (the `pg_server`
fixture of tests/conftest.py)."""

from __future__ import annotations

import uuid

from cpp_dagster.local.postgres import ensure_database


def new_database(server, prefix: str) -> str:
    """A new, empty database `<prefix>_<random>` on `server`; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    ensure_database(server.get_uri(), name)
    return server.get_uri(database=name)
