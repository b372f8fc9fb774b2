"""Resources: imagedb, the NAS paths and the IO manager, configured from the environment
(cpp_dagster.config) when the run starts, not when the code location loads."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg

from cpp_dagster import config, paths
from cpp_dagster.imagedb.store import ImageDB


class ImageDBResource(dg.ConfigurableResource):
    """imagedb; `url` defaults to CPP_IMAGEDB_URL, else the embedded local server."""

    url: str | None = None

    def db(self) -> ImageDB:
        return ImageDB(self.url or config.imagedb_url())


class NasResource(dg.ConfigurableResource):
    """NAS, work area and CellProfiler locations; unset fields come from the environment."""

    nas_root: str | None = None
    work_root: str | None = None
    pipelines_dir: str | None = None
    cellprofiler: str | None = None

    def settings(self) -> config.Settings:
        base = config.load_settings()
        # the environment's settings, with this resource's fields over them (every other
        # field, e.g. the retention, stays the environment's)
        return dataclasses.replace(
            base,
            nas_root=Path(self.nas_root) if self.nas_root else base.nas_root,
            work_root=Path(self.work_root) if self.work_root else base.work_root,
            pipelines_dir=Path(self.pipelines_dir) if self.pipelines_dir else base.pipelines_dir,
            cellprofiler=self.cellprofiler or base.cellprofiler,
        )


class WorkAreaIOManager(dg.ConfigurableIOManagerFactory):
    """Pickled step outputs (small descriptors) on the shared work area,
    `$CPP_WORK_ROOT/dagster-io` by default: never on a step-local disk, since under the
    k8s executor every step is its own pod."""

    base_dir: str | None = None

    def create_io_manager(self, context) -> dg.IOManager:
        base = self.base_dir or str(config.load_settings().work_root / "dagster-io")
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
