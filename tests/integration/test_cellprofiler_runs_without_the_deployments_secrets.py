"""CellProfiler (and any plugin it loads) runs with an allow-listed environment: the
step's database URLs, Dagster's storage URL, PG* variables and tokens never reach it.
A stand-in `cellprofiler` prints the environment it was given and fails, as a plugin
that leaks it would; the real `run_batch` starts it."""

from __future__ import annotations

import os
import stat

import pytest

from cpp_dagster.analysis.cellprofiler import CellProfilerError, run_batch

SECRETS = {
    "CPP_IMAGEDB_URL": "postgresql://cpp:imagedb-S3cret@db.lab/imagedb",
    "CPP_TRAINING_DB_URL": "postgresql://cpp:training-S3cret@db.lab/training",
    "CPP_DATABASE_CHEMBL_URL": "postgresql://reader:chembl-S3cret@db.lab/chembl",
    "DAGSTER_PG_URL": "postgresql+psycopg2://dagster:dagster-S3cret@db.lab/dagster",
    "DAGSTER_PG_PASSWORD": "dagster-pw-S3cret",
    "PGPASSWORD": "pg-S3cret",
    "CPP_MODEL_REGISTRY_TOKEN": "token-S3cret",
    "AWS_SECRET_ACCESS_KEY": "aws-S3cret",
}


def test_cellprofiler_sees_only_the_allowed_variables(tmp_path, monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    standin = tmp_path / "cellprofiler"
    standin.write_text("#!/bin/sh\nenv\nexit 3\n")
    standin.chmod(standin.stat().st_mode | stat.S_IXUSR)
    batch = tmp_path / "batch_0000"
    batch.mkdir()
    (batch / "loaddata.csv").write_text("")
    with pytest.raises(CellProfilerError, match="exited with code 3") as failed:
        run_batch(
            cellprofiler=str(standin),
            pipeline=tmp_path / "p.cppipe",
            batch_dir=batch,
            expected_image_sets=1,
            timeout_s=60,
            echo=lambda line: None,
        )
    log = (batch / "cellprofiler.log").read_text()
    seen = dict(line.split("=", 1) for line in log.splitlines()[1:] if "=" in line)
    for value in SECRETS.values():
        assert value not in log and value not in str(failed.value)
    assert not {k for k in seen if k.startswith(("CPP_", "DAGSTER_", "PG"))}
    assert seen["PATH"] == os.environ["PATH"] and seen["LANG"] == "C.UTF-8"
    assert seen["OMP_NUM_THREADS"] == "1" and seen["MPLBACKEND"] == "Agg"
