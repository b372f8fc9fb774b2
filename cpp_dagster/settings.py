"""Every setting of the project, typed, read from the environment once.

`load_settings()` is the entry point: it parses every `CPP_*` variable, checks it, and
returns one frozen `Settings` (cached for as long as the `CPP_*` environment does not
change). A bad value is refused with a line that names the variable and says what is
expected, all bad values at once (`SettingsError`). Unset or empty means the default.

Code receives a `Settings` (or one of its groups) as an argument; no other module reads
a `CPP_*` variable. The README's configuration table is `cpp-dagster settings --markdown`
(a test checks they agree). Secrets (a password inside a database URL, the registry
token) never appear in a repr or a log line: see `redact_url`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from cpp_dagster import setting_reader
from cpp_dagster.service_settings import COMPOUND_DATABASES, Notify, Registry, Training, compound_databases
from cpp_dagster.setting_rules import (
    Group,
    Spec,
    boolean,
    count,
    days,
    duration,
    folder_list,
    group,
    one_of,
    path,
    positive_int,
    positive_number,
    setting,
    spec_of,
    url_template,
    version_map,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# --- the settings -----------------------------------------------------------------------


@group
class Launch(Group):
    """How runs are launched and steps executed and retried."""

    executor: str = setting(
        "CPP_EXECUTOR",
        "`multiprocess` (each batch a process), `in_process`, or `k8s` (each step its own pod)",
        "multiprocess",
        one_of("multiprocess", "in_process", "k8s"),
    )
    max_concurrent: int = setting(
        "CPP_MAX_CONCURRENT", "batch processes per run (multiprocess executor)", 2, positive_int
    )
    sensor_interval_s: int = setting(
        "CPP_SENSOR_INTERVAL_S",
        "seconds between ticks of the launch, training and `notify_lab` sensors",
        30,
        positive_int,
        shown="30 (demo: 5)",
    )
    sensor_max_requests: int = setting(
        "CPP_SENSOR_MAX_REQUESTS",
        "runs the launch sensor requests per tick at most (the rest on the next tick)",
        2000,
        positive_int,
    )
    sensor_max_new_keys: int = setting(
        "CPP_SENSOR_MAX_NEW_KEYS", "new partition keys the launch sensor adds per tick at most", 300, positive_int
    )
    overview_interval_s: int = setting(
        "CPP_OVERVIEW_INTERVAL_S",
        "seconds between refreshes of the lab overview and the pipelines in the UI "
        "(`imagedb/lab_overview`, `imagedb/analysis_pipelines`)",
        60,
        positive_int,
    )
    batch_retries: int = setting(
        "CPP_BATCH_RETRIES", "retries of a failed batch (a crash, a killed step process)", 1, count
    )
    batch_retry_delay_s: float = setting(
        "CPP_BATCH_RETRY_DELAY_S", "seconds before the first retry of a batch (doubling)", 5.0, duration, shown="5"
    )
    retry_timeouts: bool = setting(
        "CPP_RETRY_TIMEOUTS",
        "also retry a batch killed by its `job_timeout`; by "
        "default it fails at once, since it would take as long again",
        False,
        boolean,
    )
    k8s_config: Path | None = setting(
        "CPP_K8S_CONFIG", "the pod settings file of the `k8s` executor (see `deploy/k8s-pods.yaml`)", None, path
    )
    ui_runs: str | None = setting(
        "CPP_UI_RUNS",
        "what a run launched from the UI (Materialize, backfill) does once it has submitted the "
        "pipeline: `run` its steps itself, or `submit` only, and the launch sensor runs each sub-analysis with its "
        "own pod settings (a UI run cannot carry a cp_version's image)",
        None,
        one_of("run", "submit"),
        shown="`submit` with `CPP_EXECUTOR=k8s`, else `run`",
    )

    @property
    def ui_runs_run_steps(self) -> bool:
        """Whether a UI run runs the steps it submitted (CPP_UI_RUNS, by executor when unset)."""
        return (self.ui_runs or ("submit" if self.executor == "k8s" else "run")) == "run"


@group
class Limits(Group):
    """How large one sub-analysis may be: beyond a cap it fails in imagedb with the cap
    named, before any batch runs (a typo must not plan millions of pods)."""

    max_z_planes: int = setting("CPP_MAX_Z_PLANES", "z planes a sub-analysis's `z` may name", 1000, positive_int)
    max_image_sets: int = setting("CPP_MAX_IMAGE_SETS", "image sets of one sub-analysis", 200_000, positive_int)
    max_batches: int = setting(
        "CPP_MAX_BATCHES", "batches (CellProfiler steps, pods on Kubernetes) of one sub-analysis", 5000, positive_int
    )
    max_loaddata_mb: float = setting("CPP_MAX_LOADDATA_MB", "size of one batch's LoadData CSV", 64, positive_number)


@group
class Settings(Group):
    """Where things are on the NAS, which CellProfiler runs, where imagedb is, and the
    groups `launch`, `training`, `registry`, `limits`, `notify`. Built by hand, the groups are their defaults."""

    nas_root: Path = setting(
        "CPP_NAS_ROOT",
        "NAS root: `images/`, `pipelines/`, `results/`",
        parse=path,
        shown="`.cpp/nas`",
        derived=lambda get: get("CPP_LOCAL_DIR") / "nas",
    )
    work_root: Path = setting(
        "CPP_WORK_ROOT",
        "shared work area: LoadData CSVs, batch outputs, step IO",
        parse=path,
        shown="`$CPP_NAS_ROOT/work`",
        derived=lambda get: get("CPP_NAS_ROOT") / "work",
    )
    pipelines_dir: Path = setting(
        "CPP_PIPELINES_DIR",
        "folder that a sub-analysis's `pipeline_file` is relative to",
        parse=path,
        shown="`$CPP_NAS_ROOT/pipelines`",
        derived=lambda get: get("CPP_NAS_ROOT") / "pipelines",
    )
    cellprofiler: str = setting(
        "CPP_CELLPROFILER",
        "the `cellprofiler` executable",
        shown="`.venv-cp/bin/cellprofiler`",
        derived=lambda get: str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler"),
    )
    cellprofiler_versions: tuple[tuple[str, str], ...] = setting(
        "CPP_CELLPROFILER_VERSIONS",
        "the CellProfiler versions a local sub-analysis's `cp_version` may name, `VERSION=EXECUTABLE` separated "
        "by `,`; `CPP_CELLPROFILER` is always there under the version it reports. Another `cp_version` fails "
        "before any batch, naming these (on `k8s` the pod settings' images decide)",
        (),
        version_map,
        shown="unset",
    )
    image_roots: tuple[Path, ...] = setting(
        "CPP_IMAGE_ROOTS",
        "folders every image path in imagedb must lie under, separated by `:`; a sub-analysis with an "
        "image elsewhere fails before any batch",
        (),
        folder_list,
        shown="`$CPP_NAS_ROOT/images`",
    )
    imagedb_url: str | None = setting(
        "CPP_IMAGEDB_URL",
        "imagedb, a PostgreSQL URL (`postgresql://user:pw@host/db`)",
        None,
        shown="the local deployment's embedded server (`.cpp/pgdata`); required elsewhere",
        secret="url",
    )
    local_dir: Path = setting(
        "CPP_LOCAL_DIR",
        "where the embedded PostgreSQL and the local NAS live",
        PROJECT_ROOT / ".cpp",
        path,
        shown="`.cpp`",
    )
    results_url_template: str | None = setting(
        "CPP_RESULTS_URL_TEMPLATE",
        "link to a result folder (`cpp-dagster status`, the lab overview), `{path}` "
        "replaced by `result.job_folder` (URL-quoted), e.g. `https://files.lab/{path}`",
        None,
        url_template,
        shown="unset (no URL column)",
    )
    pipeline_check_dir: Path | None = setting(
        "CPP_PIPELINE_CHECK_CACHE",
        "where the pipeline check keeps what CellProfiler found in each pipeline file (one inspection per "
        "file and CellProfiler)",
        None,
        path,
        shown="`$CPP_WORK_ROOT/.pipeline-checks`",
    )
    work_retention_days: float = setting(
        "CPP_WORK_RETENTION_DAYS",
        "days a finished sub-analysis's work folders, and an ended run's compute logs, pickles and training folders, "
        "are kept before the nightly `clean_work_area` job or `cpp-dagster gc` removes them (`--retention-days N`)",
        7,
        days,
    )
    launch: Launch = field(default_factory=Launch)
    training: Training = field(default_factory=Training)
    registry: Registry = field(default_factory=Registry)
    limits: Limits = field(default_factory=Limits)
    notify: Notify = field(default_factory=Notify)

    @property
    def results_root(self) -> Path:
        return self.nas_root / "results"

    @property
    def image_folders(self) -> tuple[Path, ...]:
        """CPP_IMAGE_ROOTS, or `$CPP_NAS_ROOT/images` when unset."""
        return self.image_roots or (self.nas_root / "images",)

    @property
    def pipeline_check_cache(self) -> Path:
        return self.pipeline_check_dir or self.work_root / ".pipeline-checks"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Every setting from `environ`, checked; SettingsError lists every bad value."""
        return setting_reader.build(cls, environ, specs(), special={COMPOUND_DATABASES: compound_databases})


GROUPS = (Settings, Launch, Training, Registry, Limits, Notify)


def specs() -> list[Spec]:
    """Every setting, in the order of the README's table."""
    return [spec_of(f) for cls in GROUPS for f in fields(cls) if spec_of(f)]


@lru_cache(maxsize=8)
def _from_snapshot(snapshot: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(snapshot))


def load_settings() -> Settings:
    """The process's settings: parsed once per distinct `CPP_*` environment."""
    return _from_snapshot(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("CPP_"))))


def settings_table() -> str:
    """The README's configuration table (`cpp-dagster settings --markdown`)."""
    return setting_reader.table(specs())


def current_values(settings: Any) -> list[str]:
    """`VARIABLE=value` per setting in effect, secrets redacted (`cpp-dagster settings`)."""
    return setting_reader.current_values(settings, families={COMPOUND_DATABASES})
