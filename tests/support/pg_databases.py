"""Databases of a test's own on the session's embedded PostgreSQL (the `pg_server`
fixture of tests/conftest.py)."""

from __future__ import annotations

import uuid

from cpp_dagster.local.environment import COMPOUNDS_READER
from cpp_dagster.local.postgres import ensure_database, ensure_reader


def new_database(server, prefix: str) -> str:
    """A new, empty database `<prefix>_<random>` on `server`; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    ensure_database(server.get_uri(), name)
    return server.get_uri(database=name)


def compound_database(server, prefix: str = "compounds") -> tuple[str, str]:
    """A new compound database holding the public demo data set in table `compounds`, as
    the local deployment has it: (the superuser's URL, for the test to look with; the
    URL of the read-only role training queries run as)."""
    from cpp_dagster.training.compounds import load_public_dataset

    admin = new_database(server, prefix)
    load_public_dataset(admin)
    return admin, ensure_reader(admin, COMPOUNDS_READER, ["compounds"])
