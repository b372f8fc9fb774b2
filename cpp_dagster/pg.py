"""PostgreSQL the way the project talks to it: one transaction at a time, values as parameters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import psycopg2
import psycopg2.extensions
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


_applied: set[tuple[str, str]] = set()  # (schema package, url) applied by this process
_applied_lock = threading.Lock()


class Database:
    """One PostgreSQL database the project talks to: `_cursor()` opens one transaction, and
    `apply_schema()` runs the `schema.sql` of the package named by SCHEMA_PACKAGE.

    It keeps one connection open between its transactions and reuses it (checked
    with a round trip first, so one the server has closed, e.g. after a restart, is
    replaced): a step or a sensor tick connects once, not once per query. A transaction
    opened while another of the same database object is still open (nested) gets a connection of
    its own, and one that ends in an error closes its connection.

    A database the project owns (SCHEMA_ON_FIRST_USE) applies its schema
    (idempotent DDL) before its first transaction in a process, so a fresh instance
    works without a separate init step. imagedb does not: it is the lab's database, its
    schema is applied by `cpp-dagster db init` (and the local demo/dev commands)."""

    SCHEMA_PACKAGE: str
    SCHEMA_ON_FIRST_USE = False

    def __init__(self, url: str):
        self.url = url
        self._idle: list = []  # at most one open connection between transactions
        self._idle_lock = threading.Lock()

    def _cursor(self):
        if self.SCHEMA_ON_FIRST_USE and (self.SCHEMA_PACKAGE, self.url) not in _applied:
            self.apply_schema()
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[psycopg2.extras.RealDictCursor]:
        conn, reusable = self._connection(), False
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
            reusable = conn.status == psycopg2.extensions.STATUS_READY
        finally:
            with self._idle_lock:
                if reusable and not conn.closed and not self._idle:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def _connection(self):
        """The idle connection if it still answers, else a new one."""
        with self._idle_lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                with conn.cursor() as cur:  # begins the caller's transaction
                    cur.execute("SELECT 1")
                return conn
            except psycopg2.Error:
                conn.close()
        return psycopg2.connect(self.url)

    def close(self) -> None:
        """Close the idle connection (the store stays usable: the next transaction connects)."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def apply_schema(self) -> None:
        ddl = resources.files(self.SCHEMA_PACKAGE).joinpath("schema.sql").read_text()
        with _applied_lock:
            with transaction(self.url) as cur:
                # two processes applying it at once (daemon, run worker) take turns
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.SCHEMA_PACKAGE,))
                cur.execute(ddl)
            _applied.add((self.SCHEMA_PACKAGE, self.url))
