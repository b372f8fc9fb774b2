"""The whole code location loads as Dagster itself loads it: `dagster definitions validate`
over the project's workspace.yaml, in a process of its own with no more environment than
a deployment gives it (a NAS root and imagedb), locally and on Kubernetes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cpp_dagster.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent
LOCATION = "cpp-dagster"  # workspace.yaml's location_name


@pytest.mark.parametrize(
    "deployment",
    [
        {},
        {"CPP_EXECUTOR": "k8s", "CPP_K8S_CONFIG": str(PROJECT_ROOT / "deploy" / "k8s-pods.yaml")},
    ],
    ids=["multiprocess", "k8s"],
)
def test_the_whole_code_location_loads_as_dagster_loads_it(db, tmp_path, deployment):
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "CPP_NAS_ROOT": str(tmp_path / "nas"),
        "CPP_IMAGEDB_URL": db.url,
        **deployment,
    }
    # from tmp_path, where no dagster.yaml is: the command makes a temporary instance of its own
    done = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"Validation successful for code location {LOCATION}" in output, output[-3000:]
