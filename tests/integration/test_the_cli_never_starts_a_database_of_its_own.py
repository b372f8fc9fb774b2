"""Outside the local deployment, a CLI command with no database URL is one settings error:
it never starts an embedded PostgreSQL of its own (on a lab workstation or in a pod, that
would be a private imagedb nobody else sees). Where `make demo` / `make dev` made the local
deployment, the same commands attach to its embedded server."""

from __future__ import annotations

import pytest

from cpp_dagster import cli

COMMANDS = {
    "status": ["status"],
    "submit": ["submit", "--plate-acquisition", "1", "--pipeline", "demo-cellpainting"],
    "rerun": ["rerun", "1"],
    "gc": ["gc", "--dry-run"],
    "db init": ["db", "init"],
    "train list": ["train", "list"],
    "pipeline list": ["pipeline", "list"],
}


@pytest.fixture
def no_database_urls(monkeypatch, tmp_path):
    for variable in ("CPP_IMAGEDB_URL", "CPP_TRAINING_DB_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("CPP_NAS_ROOT", str(tmp_path / "nas"))


@pytest.mark.parametrize("argv", COMMANDS.values(), ids=COMMANDS.keys())
def test_a_command_without_a_url_outside_the_local_deployment_is_one_settings_error(
    argv, no_database_urls, tmp_path, monkeypatch, capsys
):
    local_dir = tmp_path / "not-a-local-deployment"
    local_dir.mkdir()
    monkeypatch.setenv("CPP_LOCAL_DIR", str(local_dir))

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    variable = "CPP_TRAINING_DB_URL" if argv[0] == "train" else "CPP_IMAGEDB_URL"
    assert f"{variable} is not set, and this machine has no local deployment" in err, err
    assert "Traceback" not in err
    assert list(local_dir.iterdir()) == []  # no data folder made, no server started


def test_the_commands_attach_to_an_existing_local_deployment(pg_server, no_database_urls, monkeypatch, capsys):
    """The test session's embedded server stands in for the one `make dev` made: its data
    folder is `<local dir>/pgdata`, as the local deployment's is."""
    monkeypatch.setenv("CPP_LOCAL_DIR", str(pg_server.pgdata.parent))

    assert cli.main(["db", "init"]) == 0
    assert "imagedb schema applied" in capsys.readouterr().err
    assert cli.main(["status"]) == 0
    assert "no plate acquisitions registered" in capsys.readouterr().out
