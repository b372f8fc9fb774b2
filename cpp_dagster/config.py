"""The settings (cpp_dagster.settings, re-exported here) and the few helpers that
resolve a setting's local default: the embedded PostgreSQL's imagedb, the local folder.

Nothing here holds a secret: a password travels inside CPP_IMAGEDB_URL, which comes
from the environment (on Kubernetes from a Secret) and is never logged (see `redact_url`).
"""
from __future__ import annotations

from pathlib import Path

from cpp_dagster.settings import (
    PROJECT_ROOT,
    Launch,
    Registry,
    Settings,
    SettingsError,
    Training,
    TrainingQueryLimits,
    load_settings,
    redact_url,
)

__all__ = ["PROJECT_ROOT", "Launch", "Registry", "Settings", "SettingsError", "Training", "TrainingQueryLimits",
           "imagedb_url", "load_settings", "local_dir", "redact_url", "retry_timeouts"]


def local_dir(settings: Settings | None = None) -> Path:
    """Where the embedded PostgreSQL and the local NAS live (CPP_LOCAL_DIR)."""
    return (settings or load_settings()).local_dir


def imagedb_url(settings: Settings | None = None) -> str:
    """imagedb's URL: CPP_IMAGEDB_URL, else the embedded local server's (started if needed)."""
    url = (settings or load_settings()).imagedb_url
    if url:
        return url
    from cpp_dagster import local_postgres

    return local_postgres.database_url("imagedb")


def retry_timeouts() -> bool:
    """CPP_RETRY_TIMEOUTS, for defs/assets.py until it takes `settings.launch.retry_timeouts`."""
    return load_settings().launch.retry_timeouts
