"""`cpp-dagster settings`, the command in a process of its own: docs/operations.md's table
is what it prints, every bad value is listed at once with exit code 2, and secrets never
reach the terminal. The Settings themselves: tests/unit/test_settings.py."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from cpp_dagster.setting_rules import SettingsError
from cpp_dagster.settings import PROJECT_ROOT, Settings, specs

CLI = str(PROJECT_ROOT / ".venv" / "bin" / "cpp-dagster")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CPP_")}
    return subprocess.run([CLI, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=120)


def readme_settings_table() -> str:
    readme = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    found = re.search(r"<!-- settings table: .*? -->\n(.*?)\n<!-- end of settings table -->", readme, re.S)
    assert found, "docs/operations.md has no generated settings table (the markers are missing)"
    return found.group(1)


def test_readme_configuration_table_is_what_cpp_dagster_settings_prints():
    printed = cli("settings", "--markdown")
    assert printed.returncode == 0, printed.stderr
    assert readme_settings_table() == printed.stdout.rstrip("\n"), (
        "docs/operations.md's configuration table is stale: paste `cpp-dagster settings --markdown` between its markers"
    )
    variables = [s.variable for s in specs()]
    assert len(variables) == len(set(variables))
    for spec in specs():  # every row: the variable, its meaning and its default
        assert f"| `{spec.variable}` | {spec.meaning} | {spec.shown_default} |" in printed.stdout
    assert "| `CPP_WORK_RETENTION_DAYS` | " in printed.stdout and printed.stdout.count("| 7 |") == 1


def test_every_bad_value_is_listed_at_once_and_the_command_exits_2():
    bad = {"CPP_SENSOR_INTERVAL_S": "soon", "CPP_MODEL_REGISTRY_MAX_UPLOAD_MB": "big", "CPP_NAS_ROOT": "/tmp/nas"}
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(bad)
    assert sorted(str(refused.value).splitlines()) == [
        "CPP_MODEL_REGISTRY_MAX_UPLOAD_MB='big': expected a positive number",
        "CPP_SENSOR_INTERVAL_S='soon': expected a positive whole number",
    ]
    done = cli("settings", env=bad)
    assert done.returncode == 2 and done.stdout == ""
    assert sorted(done.stderr.splitlines()) == [
        "cpp-dagster settings: CPP_MODEL_REGISTRY_MAX_UPLOAD_MB='big': expected a positive number",
        "cpp-dagster settings: CPP_SENSOR_INTERVAL_S='soon': expected a positive whole number",
    ]


def test_passwords_and_tokens_never_appear_in_a_repr_or_the_terminal(tmp_path):
    env = {
        "CPP_IMAGEDB_URL": "postgresql://cpp:imagedb-pw@db.lab:5432/imagedb",
        "CPP_TRAINING_DB_URL": "postgresql://cpp:training-pw@db.lab/training",
        "CPP_DATABASE_CHEMBL_URL": "postgresql://reader:chembl-pw@chembl.lab/chembl",
        "CPP_MODEL_REGISTRY_URL": "https://bot:registry-pw@models.lab",
        "CPP_MODEL_REGISTRY_TOKEN": "tok-123",
        "CPP_NAS_ROOT": str(tmp_path / "nas"),
    }
    settings = Settings.from_env(env)
    assert settings.imagedb_url == env["CPP_IMAGEDB_URL"] and settings.registry.token == "tok-123"
    shown = cli("settings", env=env)
    assert shown.returncode == 0, shown.stderr
    for text in (repr(settings), str(settings), repr(settings.training), shown.stdout):
        for secret in ("imagedb-pw", "training-pw", "chembl-pw", "registry-pw", "tok-123"):
            assert secret not in text
    assert "CPP_IMAGEDB_URL=postgresql://cpp:***@db.lab:5432/imagedb" in shown.stdout.splitlines()
    assert "CPP_MODEL_REGISTRY_TOKEN=***" in shown.stdout.splitlines()
    assert f"CPP_NAS_ROOT={tmp_path / 'nas'}" in shown.stdout.splitlines()
