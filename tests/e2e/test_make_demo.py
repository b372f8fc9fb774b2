"""`make demo`'s command on a fresh local directory: embedded PostgreSQL, the real
dagster-daemon and its sensor, real CellProfiler; the last line is the JSON outcome."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cpp_dagster.settings import PROJECT_ROOT

CLI = str(Path(sys.executable).with_name("cpp-dagster"))


def test_demo_command_prints_the_outcome_read_back_from_imagedb():
    local = Path(tempfile.mkdtemp(prefix="cpp-demo-test-"))
    local.chmod(0o755)  # the embedded server runs as its own user and must reach its folder
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CPP_", "DAGSTER_"))}
    env.update(CPP_LOCAL_DIR=str(local), CPP_SENSOR_INTERVAL_S="2")
    try:
        proc = subprocess.run(
            [CLI, "demo", "--wells", "2", "--sites", "2", "--batch-size", "2"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        daemon_log = local / "logs" / "dagster-daemon.log"
        assert proc.returncode == 0, proc.stderr[-3000:] + (
            daemon_log.read_text()[-3000:] if daemon_log.exists() else ""
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["batches"] == 2 and result["image_sets"] == 4
        assert set(result["tables"]) == {"Image", "Nuclei", "Cells", "Cytoplasm", "single_cell", "well_profiles"}
        assert result["tables"]["single_cell"]["rows"] == result["tables"]["Cells"]["rows"]
        assert result["tables"]["well_profiles"]["rows"] == 2
        assert result["tables"]["Image"]["rows"] == 4
        for table in result["tables"].values():
            assert table["rows"] > 0 and table["columns"] > 2
            assert Path(table["path"]).is_file()
            assert table["path"].startswith(str(local / "nas" / "results" / "DEMO-0001"))
        assert result["db"]["finish"] and result["db"]["error"] is None
        assert result["dagster_run"]["status"] == "SUCCESS"
        assert "batches finished" in proc.stderr  # progress was followed from imagedb
    finally:
        subprocess.run([CLI, "local", "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(local, ignore_errors=True)
