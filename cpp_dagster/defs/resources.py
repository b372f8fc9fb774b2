"""Resources: the deployment's settings, imagedb and the IO manager. They read the
environment when a step or sensor starts, not when the code location loads, and hand the
typed `Settings` to the domain code, which never reads the environment itself.

No resource starts a database: a URL the environment does not give is a SettingsError
naming the variable (the local deployment, `cpp_dagster.local`, gives them all).

No resource has a config field: anyone who can reach the UI can launch a run with any
run config, so the roots and URLs a step works with (the NAS root, the work area, the
pipelines folder, CellProfiler, imagedb) come from the deployment's environment only.
A run config naming one (`resources.deployment.config.nas_root`) is refused by Dagster's
config validation before the run starts."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from cpp_dagster import paths
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.setting_rules import SettingsError
from cpp_dagster.settings import Settings, load_settings


def required_url(url: str | None, variable: str) -> str:
    """`url`, or a SettingsError naming the variable that should have given it."""
    if not url:
        raise SettingsError(
            f"{variable} is not set: give it the database's PostgreSQL URL (on Kubernetes from "
            "its Secret; `make dev` and `make demo` set it to the embedded local server's)"
        )
    return url


class ImageDBResource(dg.ConfigurableResource):
    """imagedb at CPP_IMAGEDB_URL. One `ImageDB` per step or sensor tick, so its queries
    share one connection."""

    _db: ImageDB | None = PrivateAttr(default=None)

    def db(self) -> ImageDB:
        if self._db is None:
            self._db = ImageDB(required_url(load_settings().imagedb_url, "CPP_IMAGEDB_URL"))
        return self._db


class DeploymentResource(dg.ConfigurableResource):
    """The deployment's settings (every CPP_* variable, typed), read once per step from
    the environment and handed to the domain code."""

    _settings: Settings | None = PrivateAttr(default=None)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings


class WorkAreaIOManager(dg.ConfigurableIOManagerFactory):
    """Pickled step outputs (small descriptors) on the shared work area,
    `$CPP_WORK_ROOT/dagster-io`: never on a step-local disk, since under the k8s executor
    every step is its own pod."""

    def create_io_manager(self, context) -> dg.IOManager:
        base = str(load_settings().work_root / "dagster-io")
        return PartitionKeysAsFolders(dg.FilesystemIOManager(base_dir=base).create_io_manager(context))


class PartitionKeysAsFolders(dg.IOManager):
    """The filesystem IO manager names a folder after each partition key; a dynamic
    partition can be added by hand in the UI with any key. Every key goes through the
    path rule before a file is written or read (paths.UnsafePathError otherwise)."""

    def __init__(self, inner: dg.IOManager):
        self.inner = inner

    @staticmethod
    def _check(context) -> None:
        keys = [context.partition_key] if context.has_partition_key else []
        if context.has_asset_partitions:
            keys += context.asset_partition_keys
        for key in keys:
            paths.component(key, "partition key")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self._check(context)
        self.inner.handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        self._check(context)
        return self.inner.load_input(context)
