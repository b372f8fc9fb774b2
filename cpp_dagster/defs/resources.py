"""Resources: the deployment's settings, imagedb and the IO manager. They read the
environment when a step or sensor starts, not when the code location loads, and hand the
typed `Settings` to the domain code, which never reads the environment itself.

No resource starts a database: a URL the environment does not give is a SettingsError
naming the variable (the local deployment, `cpp_dagster.local`, gives them all)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from cpp_dagster import paths
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.settings import Settings, SettingsError, load_settings


def required_url(url: str | None, variable: str) -> str:
    """`url`, or a SettingsError naming the variable that should have given it."""
    if not url:
        raise SettingsError(
            f"{variable} is not set: give it the database's PostgreSQL URL (on Kubernetes from "
            "its Secret; `make dev` and `make demo` set it to the embedded local server's)"
        )
    return url


class ImageDBResource(dg.ConfigurableResource):
    """imagedb; `url` defaults to CPP_IMAGEDB_URL. One `ImageDB` per step or sensor tick,
    so its queries share one connection."""

    url: str | None = None
    _db: ImageDB | None = PrivateAttr(default=None)

    def db(self) -> ImageDB:
        if self._db is None:
            self._db = ImageDB(self.url or required_url(load_settings().imagedb_url, "CPP_IMAGEDB_URL"))
        return self._db


class DeploymentResource(dg.ConfigurableResource):
    """The deployment's settings (every CPP_* variable, typed), read once per step and
    handed to the domain code. Unset fields come from the environment."""

    nas_root: str | None = None
    work_root: str | None = None
    pipelines_dir: str | None = None
    cellprofiler: str | None = None
    _settings: Settings | None = PrivateAttr(default=None)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            base = load_settings()
            # the environment's settings, with this resource's fields over them (every other
            # field, e.g. the retention, stays the environment's)
            self._settings = dataclasses.replace(
                base,
                nas_root=Path(self.nas_root) if self.nas_root else base.nas_root,
                work_root=Path(self.work_root) if self.work_root else base.work_root,
                pipelines_dir=Path(self.pipelines_dir) if self.pipelines_dir else base.pipelines_dir,
                cellprofiler=self.cellprofiler or base.cellprofiler,
            )
        return self._settings


class WorkAreaIOManager(dg.ConfigurableIOManagerFactory):
    """Pickled step outputs (small descriptors) on the shared work area,
    `$CPP_WORK_ROOT/dagster-io` by default: never on a step-local disk, since under the
    k8s executor every step is its own pod."""

    base_dir: str | None = None

    def create_io_manager(self, context) -> dg.IOManager:
        base = self.base_dir or str(load_settings().work_root / "dagster-io")
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
