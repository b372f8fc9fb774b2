"""One PostgreSQL transaction, the way every store of the project talks to its database."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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
