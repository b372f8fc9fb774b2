"""`cpp-dagster train add` and `train list`, in a process of their own against a real
training store: a bad file is refused with exit code 2, a good one stored once. The
configurations themselves: tests/unit/test_training_configuration_and_pods.py."""

from __future__ import annotations

import json
import os
import subprocess

from pg_databases import new_database

from cpp_dagster.settings import PROJECT_ROOT

EXAMPLE = json.loads((PROJECT_ROOT / "cpp_dagster" / "training" / "examples" / "solubility.json").read_text())


def test_cli_add_refuses_a_bad_file_and_stores_a_version_once(pg_server, tmp_path):
    env = {**os.environ, "CPP_TRAINING_DB_URL": new_database(pg_server, "training")}
    cli = [str(PROJECT_ROOT / ".venv" / "bin" / "cpp-dagster"), "train"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**EXAMPLE, "splits": "two"}))
    result = subprocess.run([*cli, "add", str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "splits must be an integer, got 'two'" in result.stderr

    good = tmp_path / "good.json"
    good.write_text(json.dumps(EXAMPLE))
    first = subprocess.run([*cli, "add", str(good)], env=env, capture_output=True, text=True, timeout=120, check=True)
    again = subprocess.run(
        [*cli, "add", str(good), "--added-by", "ada"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(first.stdout)["new_version"] is True and json.loads(again.stdout)["new_version"] is False
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert [json.loads(line)["partition_key"] for line in listed.stdout.splitlines()] == [
        json.loads(first.stdout)["partition_key"]
    ]
