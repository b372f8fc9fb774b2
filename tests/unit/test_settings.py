"""Every setting in one typed Settings: no module reads a CPP_* variable behind its back,
bad values are refused with a line naming the variable. The command that prints them
(`cpp-dagster settings`: the docs' table, exit code 2, no secret in the terminal):
tests/integration/test_settings_command.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from cpp_dagster.service_settings import COMPOUND_DATABASE
from cpp_dagster.setting_rules import SettingsError
from cpp_dagster.settings import (
    PROJECT_ROOT,
    Settings,
    load_settings,
    specs,
)

PACKAGE = PROJECT_ROOT / "cpp_dagster"
# Modules the lead switches to Settings when merging the rewritten Dagster layer; remove
# each one here as it stops reading CPP_* from the environment.
NOT_YET_SWITCHED: set[str] = set()


def sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_every_cpp_variable_the_code_names_is_a_setting():
    known = {s.variable for s in specs()}
    unknown = set()
    for name, text in sources():
        for variable in re.findall(r"(?<![\w])CPP_[A-Z][A-Z0-9_]*", text):
            family = COMPOUND_DATABASE.fullmatch(variable) or variable == "CPP_DATABASE_"  # f"CPP_DATABASE_{name}_URL"
            if variable not in known and not family:
                unknown.add(f"{name}: {variable}")
    assert not unknown, f"CPP_* variables named in the code but not in Settings: {sorted(unknown)}"
    for variable in (
        "CPP_EXECUTOR",
        "CPP_MAX_CONCURRENT",
        "CPP_SENSOR_INTERVAL_S",
        "CPP_SENSOR_MAX_REQUESTS",
        "CPP_SENSOR_MAX_NEW_KEYS",
        "CPP_OVERVIEW_INTERVAL_S",
        "CPP_BATCH_RETRIES",
        "CPP_BATCH_RETRY_DELAY_S",
        "CPP_RETRY_TIMEOUTS",
        "CPP_RESULTS_URL_TEMPLATE",
        "CPP_K8S_CONFIG",
        "CPP_WORK_RETENTION_DAYS",
        "CPP_SPLIT_RETRIES",
    ):
        assert variable in known


def environment_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, key) of every os.environ.get / os.getenv / os.environ[...] / `in os.environ`;
    key '?' when it is not a literal."""

    def is_environ(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"

    def key(node) -> str:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "?"

    reads = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.func, ast.Attribute)
            and (
                (node.func.attr == "get" and is_environ(node.func.value))
                or (node.func.attr == "getenv" and getattr(node.func.value, "id", "") == "os")
            )
        ):
            reads.append((node.lineno, key(node.args[0])))
        elif isinstance(node, ast.Subscript) and is_environ(node.value) and isinstance(node.ctx, ast.Load):
            reads.append((node.lineno, key(node.slice)))
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            reads.append((node.lineno, key(node.left)))
    return reads


def test_no_module_but_the_settings_reads_a_cpp_variable_from_the_environment():
    offenders, still_reading = [], set()
    for name, text in sources():
        if name == "settings.py":
            continue
        for line, variable in environment_reads(ast.parse(text)):
            if variable.startswith("CPP_") or variable == "?":
                (still_reading.add(name) if name in NOT_YET_SWITCHED else offenders.append(f"{name}:{line} {variable}"))
    assert not offenders, f"read the Settings (load_settings() or an argument) instead: {offenders}"
    assert still_reading == NOT_YET_SWITCHED, (
        f"no longer reading the environment, remove from NOT_YET_SWITCHED: {sorted(NOT_YET_SWITCHED - still_reading)}"
    )


def test_defaults_follow_the_local_folder_and_the_nas_root(tmp_path):
    local = Settings.from_env({"CPP_LOCAL_DIR": str(tmp_path / "local")})
    assert local.nas_root == tmp_path / "local" / "nas" and local.work_root == tmp_path / "local" / "nas" / "work"
    assert local.pipelines_dir == tmp_path / "local" / "nas" / "pipelines"
    assert local.registry.folder(local.nas_root) == tmp_path / "local" / "nas" / "models"
    nas = Settings.from_env(
        {
            "CPP_NAS_ROOT": str(tmp_path / "nas"),
            "CPP_WORK_ROOT": str(tmp_path / "work"),
            "CPP_SENSOR_INTERVAL_S": " 5 ",
            "CPP_RETRY_TIMEOUTS": "TRUE",
            "CPP_EXECUTOR": "",
            "CPP_CPSIGN_COMMAND": "java -Xmx2g -jar '/opt/my cpsign/cpsign.jar'",
            "CPP_DATABASE_CHEMBL_URL": "postgresql://reader@chembl/chembl",
        }
    )
    assert (nas.nas_root, nas.work_root, nas.results_root) == (
        tmp_path / "nas",
        tmp_path / "work",
        tmp_path / "nas" / "results",
    )
    assert nas.launch.sensor_interval_s == 5 and nas.launch.retry_timeouts is True
    assert nas.launch.executor == "multiprocess"  # empty is unset
    assert nas.training.cpsign_command == ("java", "-Xmx2g", "-jar", "/opt/my cpsign/cpsign.jar")
    assert nas.training.compound_database_url("chembl") == "postgresql://reader@chembl/chembl"
    assert nas.training.compound_database_url("other") is None
    assert nas.work_retention_days == 7 and nas.training.query_limits.max_rows == 1_000_000


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("CPP_SENSOR_INTERVAL_S", "x", "CPP_SENSOR_INTERVAL_S='x': expected a positive whole number"),
        ("CPP_SENSOR_INTERVAL_S", "0", "CPP_SENSOR_INTERVAL_S='0': expected a positive whole number"),
        ("CPP_MAX_CONCURRENT", "2.5", "CPP_MAX_CONCURRENT='2.5': expected a positive whole number"),
        ("CPP_BATCH_RETRIES", "-1", "CPP_BATCH_RETRIES='-1': expected a whole number, 0 or more"),
        ("CPP_TRAINING_QUERY_TIMEOUT_S", "inf", "CPP_TRAINING_QUERY_TIMEOUT_S='inf': expected a positive number"),
        ("CPP_RETRY_TIMEOUTS", "maybe", "CPP_RETRY_TIMEOUTS='maybe': expected true or false"),
        ("CPP_EXECUTOR", "kubernetes", "CPP_EXECUTOR='kubernetes': expected 'multiprocess' or 'in_process' or 'k8s'"),
        ("CPP_TRAINING_ENGINE", "sklearn", "CPP_TRAINING_ENGINE='sklearn': expected 'embedded' or 'cpsign'"),
        (
            "CPP_RESULTS_URL_TEMPLATE",
            "https://files.lab/",
            "CPP_RESULTS_URL_TEMPLATE='https://files.lab/': must contain {path}, e.g. https://files.lab/{path}",
        ),
        ("CPP_CPSIGN_COMMAND", "java 'x", 'CPP_CPSIGN_COMMAND="java \'x": not a command line (No closing quotation)'),
        (
            "CPP_WORK_RETENTION_DAYS",
            "a week",
            "CPP_WORK_RETENTION_DAYS='a week': expected a number of days, 0 or more (e.g. 7 or 0.5)",
        ),
    ],
)
def test_a_bad_value_is_refused_with_a_line_naming_the_variable(variable, value, expected):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    assert str(refused.value) == expected


def test_settings_are_read_once_per_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CPP_NAS_ROOT", str(tmp_path / "a"))
    first = load_settings()
    assert load_settings() is first and first.nas_root == tmp_path / "a"
    monkeypatch.setenv("CPP_NAS_ROOT", str(tmp_path / "b"))
    assert load_settings().nas_root == tmp_path / "b"


def test_settings_built_by_hand_take_the_defaults_not_the_environment(monkeypatch):
    monkeypatch.setenv("CPP_BATCH_RETRIES", "9")
    settings = Settings(
        nas_root=Path("/nas"),
        work_root=Path("/work"),
        pipelines_dir=Path("/nas/pipelines"),
        cellprofiler="cellprofiler",
    )
    assert settings.launch.batch_retries == 1 and settings.results_root == Path("/nas/results")
    assert load_settings().launch.batch_retries == 9


@pytest.mark.parametrize(
    "executor, ui_runs, runs_steps",
    [("multiprocess", None, True), ("k8s", None, False), ("k8s", "run", True), ("multiprocess", "submit", False)],
)
def test_ui_runs_only_submit_on_kubernetes_unless_told(executor, ui_runs, runs_steps):
    environ = {"CPP_EXECUTOR": executor, **({"CPP_UI_RUNS": ui_runs} if ui_runs else {})}
    assert Settings.from_env(environ).launch.ui_runs_run_steps is runs_steps
