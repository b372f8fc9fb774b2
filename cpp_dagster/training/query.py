"""What a training configuration's query may be, decided by PostgreSQL's own grammar.

Chemists write the query; it runs against a compound database on a shared server. A
tokenizer of our own guessing where a statement ends was bypassed (sqlparse reads `\\'`
as an escaped quote, PostgreSQL does not, so `SELECT 'a\\'; COMMIT; DELETE ...` ran three
statements). So the query is parsed by libpg_query (the `pglast` wheel): PostgreSQL's
own scanner and grammar, the same version as the server (18). It is accepted only when
it is exactly one statement that reads: a SELECT, WITH ... SELECT, VALUES, TABLE or a
parenthesised query, with no data-modifying WITH (anywhere in it), no SELECT INTO and
no FOR UPDATE / FOR SHARE. The same check runs when a configuration is added, when the
sensor reads a stored version and when the run queries (`compounds.run_query`, which
also forces `standard_conforming_strings` on, the setting this parse assumes).

A refusal is a `QueryRefused` (a ValueError) whose message a chemist can act on; no
input makes the check raise anything else: the text is capped in length before it is
parsed, the parser runs on a thread with a stack of its own (a `1+1+...+1` of 30,000
terms overflows a default 8 MiB thread stack inside the C parser), and the tree is
walked without recursion.
"""

from __future__ import annotations

import threading
from functools import lru_cache

MAX_QUERY_CHARS = 100_000  # an IN list of 6,000 ids is 35,000; a longer list belongs in a table
_PARSER_STACK_BYTES = 256 * 1024 * 1024  # virtual: only the pages a deep query touches are used
_WRITES = {"InsertStmt": "an INSERT", "UpdateStmt": "an UPDATE", "DeleteStmt": "a DELETE", "MergeStmt": "a MERGE"}
_KINDS = {
    **_WRITES,
    "TransactionStmt": "a transaction command (BEGIN, COMMIT, ROLLBACK ...)",
    "CopyStmt": "a COPY",
    "VariableSetStmt": "a SET",
    "ExplainStmt": "an EXPLAIN",
    "DoStmt": "a DO block",
    "CallStmt": "a CALL",
    "CreateTableAsStmt": "a CREATE TABLE AS",
    "DeclareCursorStmt": "a DECLARE CURSOR",
}


class QueryRefused(ValueError):
    """The query is not exactly one statement that only reads; the message says why."""


def checked(query: object) -> str:
    """The query's one statement (without a trailing `;` or comments around it), or
    QueryRefused saying what is wrong with it."""
    if not isinstance(query, str) or not query.strip():
        raise QueryRefused("the query must be one SQL statement (a SELECT); it is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryRefused(
            f"the query is {len(query):,} characters long; at most {MAX_QUERY_CHARS:,} are allowed "
            "(load a long list of ids into a table and join it)"
        )
    return _checked(query)


@lru_cache(maxsize=64)  # a run's steps check the same stored query again
def _checked(query: str) -> str:
    statements = _parse(query)
    if len(statements) != 1:
        found = "no SQL statement" if not statements else f"{len(statements)} statements"
        raise QueryRefused(f"the query must be exactly one SQL statement (a SELECT); it holds {found}")
    raw = statements[0]
    kind = type(raw.stmt).__name__
    if kind != "SelectStmt":
        what = _KINDS.get(kind, f"a {kind.removesuffix('Stmt')} statement")
        raise QueryRefused(
            f"the query must be a SELECT (or WITH ... SELECT, VALUES, TABLE); it is {what}, which training may not run"
        )
    _refuse_anything_but_reading(raw.stmt)
    end = raw.stmt_location + raw.stmt_len if raw.stmt_len else len(query)
    statement = query[raw.stmt_location : end].strip()
    if statement != query.strip() and len(_parse(statement)) != 1:  # what is sent is what was checked
        raise QueryRefused("the query's statement could not be cut out of its text; remove the comments around it")
    return statement


def _parse(query: str) -> tuple:
    """The parse tree's statements, parsed on a thread with a large stack (see above)."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    outcome: list = []

    def parse() -> None:
        try:
            outcome.append(parse_sql(query))
        except ParseError as error:
            outcome.append(QueryRefused(f"the query is not valid PostgreSQL SQL: {_parse_error(query, error)}"))
        except Exception as error:  # noqa: BLE001  (whatever the parser says, it is a refusal, not a crash)
            outcome.append(QueryRefused(f"the query could not be parsed ({type(error).__name__}: {error})"))

    previous = threading.stack_size(_PARSER_STACK_BYTES)
    try:
        parser = threading.Thread(target=parse, name="training-query-parser", daemon=True)
        parser.start()
    finally:
        threading.stack_size(previous)
    parser.join()
    if isinstance(outcome[0], QueryRefused):
        raise outcome[0]
    return outcome[0] or ()


def _parse_error(query: str, error: Exception) -> str:
    message = str(error.args[0]) if error.args else str(error)
    at = error.args[1] if len(error.args) > 1 and isinstance(error.args[1], int) else None
    if at is None or not 0 <= at <= len(query):
        return message
    line = query.count("\n", 0, at) + 1
    column = at - (query.rfind("\n", 0, at) + 1) + 1
    return f"{message} (line {line}, column {column})"


def _refuse_anything_but_reading(select) -> None:
    """Walk the whole tree (subqueries, CTEs, set operations), without recursion."""
    from pglast import ast

    stack: list = [select]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend(node)
            continue
        if not isinstance(node, ast.Node):
            continue
        kind = type(node).__name__
        if kind in _WRITES:
            raise QueryRefused(
                f"the query must only read: it holds {_WRITES[kind]} (in a WITH clause), which training may not run"
            )
        if isinstance(node, ast.SelectStmt):
            if node.intoClause is not None:
                raise QueryRefused("the query must only read: SELECT ... INTO creates a table; remove the INTO")
            if node.lockingClause:
                raise QueryRefused(
                    "the query must only read: FOR UPDATE / FOR SHARE locks rows; remove the locking clause"
                )
        stack.extend(getattr(node, name) for name in node)
