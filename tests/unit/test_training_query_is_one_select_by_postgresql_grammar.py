"""A training query is accepted only when PostgreSQL's own grammar (libpg_query) reads
it as exactly one statement that only reads; every other input is a refusal a chemist can
read, never another exception, whatever its size or shape. The same check refuses a
configuration when it is added (`from_dict`). Against the real database:
tests/integration/test_training_queries_stay_read_only.py."""

from __future__ import annotations

import json
import threading

import pytest

from cpp_dagster.settings import PROJECT_ROOT
from cpp_dagster.training.configuration import ConfigError, from_dict
from cpp_dagster.training.query import MAX_QUERY_CHARS, QueryRefused, checked

EXAMPLE = json.loads((PROJECT_ROOT / "cpp_dagster" / "training" / "examples" / "solubility.json").read_text())
IN_LIST_6000 = "SELECT smiles, solubility AS label FROM compounds WHERE id IN (" + ",".join(map(str, range(6000))) + ")"

REFUSED = [
    # the issue's bypass: sqlparse read \' as an escaped quote; PostgreSQL does not
    (r"SELECT 'a\'; COMMIT; DELETE FROM compounds; --' AS smiles, 1 AS label", "it holds 3 statements"),
    (r"SELECT 'a\'; COMMIT; CREATE EXTENSION dblink; --' AS smiles", "it holds 3 statements"),
    ("SELECT 1; COMMIT; DELETE FROM compounds", "it holds 3 statements"),
    ("SELECT $$a$$; DELETE FROM compounds", "it holds 2 statements"),
    ("SELECT 1 /* nested /* comment */ still a comment */; DROP TABLE compounds", "it holds 2 statements"),
    ("SELECT U&'\\0027'; DROP TABLE compounds", "it holds 2 statements"),
    ("WITH d AS (DELETE FROM compounds RETURNING smiles, solubility AS label) SELECT * FROM d", "holds a DELETE"),
    ("SELECT * FROM (WITH u AS (UPDATE compounds SET smiles = '' RETURNING *) SELECT * FROM u) s", "an UPDATE"),
    ("WITH i AS (INSERT INTO compounds (id, smiles) VALUES (0, 'C') RETURNING *) SELECT * FROM i", "an INSERT"),
    ("WITH x AS (SELECT 1), d AS (DELETE FROM compounds RETURNING *) TABLE x", "holds a DELETE"),
    ("SELECT smiles, solubility AS label INTO copy_of_compounds FROM compounds", "SELECT ... INTO"),
    ("SELECT smiles FROM compounds FOR UPDATE", "FOR UPDATE / FOR SHARE"),
    ("SELECT * FROM (SELECT smiles FROM compounds FOR SHARE) s", "FOR UPDATE / FOR SHARE"),
    ("SELECT 1 UNION (SELECT id FROM compounds FOR NO KEY UPDATE SKIP LOCKED)", "FOR UPDATE / FOR SHARE"),
    ("COPY (SELECT 1) TO PROGRAM 'id > /tmp/x'", "it is a COPY"),
    ("COPY compounds TO '/tmp/compounds.csv'", "it is a COPY"),
    ("DELETE FROM compounds", "it is a DELETE"),
    ("WITH x AS (SELECT 1) DELETE FROM compounds", "it is a DELETE"),
    ("COMMIT", "a transaction command"),
    ("SET statement_timeout = 0", "it is a SET"),
    ("EXPLAIN ANALYZE DELETE FROM compounds", "it is an EXPLAIN"),
    ("DO $$ BEGIN DELETE FROM compounds; END $$", "it is a DO block"),
    ("CREATE TABLE x AS SELECT 1", "a CREATE TABLE AS"),
    ("CREATE EXTENSION dblink", "a CreateExtension statement"),
    ("DECLARE c CURSOR FOR SELECT 1", "a DECLARE CURSOR"),
    ("SELEC smiles FROM compounds", 'not valid PostgreSQL SQL: syntax error at or near "SELEC" (line 1, column 1)'),
    ("SELECT smiles\n  FROM compounds WHERE", "not valid PostgreSQL SQL: syntax error at end of input"),
    ("SELECT 'unterminated", "unterminated quoted string"),
    ("SELECT " + "(" * 20_000 + "1" + ")" * 20_000, "not valid PostgreSQL SQL"),  # the parser's own depth limit
    (";", "it holds no SQL statement"),
    ("-- only a comment", "it holds no SQL statement"),
    ("   ", "it is empty"),
    ("SELECT 1 " + "-" * MAX_QUERY_CHARS, "at most 100,000 are allowed"),
]


@pytest.mark.parametrize(("query", "reason"), REFUSED, ids=[f"refused-{i}" for i in range(len(REFUSED))])
def test_anything_but_one_reading_statement_is_refused_with_a_reason(query, reason):
    with pytest.raises(QueryRefused) as refused:
        checked(query)
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        ("SELECT smiles, solubility AS label FROM compounds", None),
        ("(SELECT smiles, solubility AS label FROM compounds)", None),
        ("TABLE compounds", None),
        ("VALUES ('C', 1.0), ('CC', 2.0)", None),
        ("WITH s AS (SELECT smiles, solubility AS label FROM compounds) SELECT * FROM s", None),
        ("SELECT ';' AS a, $q$; DELETE FROM compounds $q$ AS b, 'it''s' AS c, E'\\'' AS d", None),
        ("/* why */ SELECT smiles, solubility AS label FROM compounds; -- trailing", None),
        ("SELECT 'a\\' AS smiles, 1 AS label", None),  # standard_conforming_strings: one backslash, one string
        (IN_LIST_6000, None),
    ],
)
def test_one_reading_statement_is_accepted_and_sent_as_written(query, sent):
    assert checked(query) in query


def test_the_statement_is_sent_without_the_comments_and_semicolon_around_it():
    assert checked("/* why */ SELECT 1 AS label; -- trailing") == "SELECT 1 AS label"


def test_a_huge_expression_is_a_refusal_or_an_answer_never_a_crashed_thread():
    """`1+1+...+1` of 49,999 terms is 100,000 characters: on a default 8 MiB thread stack
    the C parser overflowed it and killed the process (a sensor runs on such a thread)."""
    query = "SELECT " + "+".join(["1"] * 49_996)
    assert len(query) <= MAX_QUERY_CHARS
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(checked(query)))
    worker.start()
    worker.join()
    assert outcome == [query]


def test_a_configuration_is_refused_when_added_with_the_reason_and_a_long_in_list_is_accepted():
    bypass = {**EXAMPLE, "query": r"SELECT 'a\'; COMMIT; DELETE FROM compounds; --' AS smiles, 1 AS label"}
    with pytest.raises(ConfigError, match="exactly one SQL statement.*it holds 3 statements"):
        from_dict(bypass)
    with pytest.raises(ConfigError, match="not valid PostgreSQL SQL"):
        from_dict({**EXAMPLE, "query": "SELECT FROM WHERE"})
    # sqlparse raised SQLParseError (not a ConfigError) out of `train add` on this one
    assert from_dict({**EXAMPLE, "query": IN_LIST_6000}).query == IN_LIST_6000
