"""`eval "$(cpp-dagster local env)"` sets each variable to exactly its value: a quote,
`$(...)` or a backtick in a URL stays text (the values were printed inside '...' unquoted,
so a `'` in a URL ended the quoting and the rest ran as a shell command)."""

from __future__ import annotations

import contextlib
import io
import subprocess

from cpp_dagster.cli import main

HOSTILE = "postgresql://u:p'$(touch {marker})`touch {marker}`;touch {marker}'@db.lab/imagedb"


def test_local_env_output_evals_to_the_values_and_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    url = HOSTILE.format(marker=marker)
    for key, value in {
        "CPP_IMAGEDB_URL": url,
        "CPP_TRAINING_DB_URL": "postgresql://t@db.lab/training",
        "CPP_DATABASE_COMPOUNDS_URL": "postgresql://r@db.lab/compounds",
        "DAGSTER_PG_URL": "postgresql+psycopg2://d@db.lab/dagster",
        "DAGSTER_HOME": str(tmp_path / "home with space"),
    }.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["local", "env"]) == 0
    shown = subprocess.run(
        ["bash", "-c", 'eval "$1"; printf "%s\\n%s" "$CPP_IMAGEDB_URL" "$DAGSTER_HOME"', "bash", out.getvalue()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.stdout.splitlines() == [url, str(tmp_path / "home with space")]
    assert not marker.exists()
