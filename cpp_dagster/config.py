"""Settings, all from the environment, with embedded local defaults.

| variable            | meaning                                             | local default                        |
|---------------------|-----------------------------------------------------|--------------------------------------|
| CPP_IMAGEDB_URL     | PostgreSQL URL of imagedb                            | embedded server in $CPP_LOCAL_DIR     |
| CPP_NAS_ROOT        | NAS root: images, pipelines/, results/               | $CPP_LOCAL_DIR/nas                   |
| CPP_WORK_ROOT       | shared work area: LoadData CSVs, batch outputs, IO   | $CPP_NAS_ROOT/work                   |
| CPP_PIPELINES_DIR   | folder that `pipeline_file` is relative to           | $CPP_NAS_ROOT/pipelines              |
| CPP_CELLPROFILER    | the cellprofiler executable                          | <repo>/.venv-cp/bin/cellprofiler     |
| CPP_LOCAL_DIR       | where the embedded PostgreSQL and local NAS live     | <repo>/.cpp                          |
| CPP_TRAINING_QUERY_TIMEOUT_S | statement timeout of a training query        | 600                                  |
| CPP_TRAINING_QUERY_MAX_ROWS  | rows a training query may return              | 1000000                              |
| CPP_MODEL_REGISTRY_MAX_UPLOAD_MB | largest model the registry server takes   | 512                                  |
| CPP_RETRY_TIMEOUTS  | retry a batch killed by its job_timeout (true/false) | false                                |
| CPP_RESULTS_URL_TEMPLATE | result folder link in `cpp-dagster status` ({path}) | unset (see cpp_dagster/overview.py)  |

Nothing here holds a secret: a password travels inside CPP_IMAGEDB_URL, which comes
from the environment (on Kubernetes from a Secret) and is never logged (see `redact_url`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def local_dir() -> Path:
    return Path(os.environ.get("CPP_LOCAL_DIR", PROJECT_ROOT / ".cpp")).resolve()


@dataclass(frozen=True)
class Settings:
    """Where things are on the NAS and which CellProfiler runs (imagedb: `imagedb_url()`)."""

    nas_root: Path
    work_root: Path
    pipelines_dir: Path
    cellprofiler: str

    @property
    def results_root(self) -> Path:
        return self.nas_root / "results"


def imagedb_url() -> str:
    url = os.environ.get("CPP_IMAGEDB_URL")
    if url:
        return url
    from cpp_dagster import local_postgres

    return local_postgres.database_url("imagedb")


def load_settings() -> Settings:
    nas_root = Path(os.environ.get("CPP_NAS_ROOT", local_dir() / "nas")).resolve()
    return Settings(
        nas_root=nas_root,
        work_root=Path(os.environ.get("CPP_WORK_ROOT", nas_root / "work")).resolve(),
        pipelines_dir=Path(os.environ.get("CPP_PIPELINES_DIR", nas_root / "pipelines")).resolve(),
        cellprofiler=os.environ.get(
            "CPP_CELLPROFILER", str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler")
        ),
    )


def redact_url(url: str) -> str:
    """A database URL fit for a log line: the password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _positive(variable: str, default: float, kind=float):
    raw = os.environ.get(variable)
    if raw is None or raw == "":
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{variable}={raw!r}: expected a positive number") from None
    if value <= 0:
        raise ValueError(f"{variable}={raw!r}: expected a positive number")
    return value


@dataclass(frozen=True)
class TrainingQueryLimits:
    """What one training ingestion query may take: seconds (statement_timeout) and rows."""

    timeout_s: float = 600
    max_rows: int = 1_000_000


def training_query_limits() -> TrainingQueryLimits:
    return TrainingQueryLimits(timeout_s=_positive("CPP_TRAINING_QUERY_TIMEOUT_S", 600),
                               max_rows=_positive("CPP_TRAINING_QUERY_MAX_ROWS", 1_000_000, int))


def registry_max_upload_bytes() -> int:
    """The largest model upload the registry server accepts (CPP_MODEL_REGISTRY_MAX_UPLOAD_MB)."""
    return int(_positive("CPP_MODEL_REGISTRY_MAX_UPLOAD_MB", 512) * 1024 * 1024)
def retry_timeouts() -> bool:
    """CPP_RETRY_TIMEOUTS: whether a batch killed by its job_timeout is retried like a
    crash (read when a batch fails, not at import). Default false: a timeout fails at once."""
    raw = os.environ.get("CPP_RETRY_TIMEOUTS", "false").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"CPP_RETRY_TIMEOUTS={raw!r}: expected true or false")
