"""Resources: imagedb and the NAS paths, configured from the environment (cpp_dagster.config)."""
from __future__ import annotations

from typing import Optional

import dagster as dg

from cpp_dagster import config
from cpp_dagster.imagedb.store import ImageDB


class ImageDBResource(dg.ConfigurableResource):
    """imagedb; `url` defaults to CPP_IMAGEDB_URL, else the embedded local server."""

    url: Optional[str] = None

    def db(self) -> ImageDB:
        return ImageDB(self.url or config.imagedb_url())


class NasResource(dg.ConfigurableResource):
    """NAS, work area and CellProfiler locations; unset fields come from the environment."""

    nas_root: Optional[str] = None
    work_root: Optional[str] = None
    pipelines_dir: Optional[str] = None
    cellprofiler: Optional[str] = None

    def settings(self) -> config.Settings:
        base = config.load_settings()
        from pathlib import Path

        return config.Settings(
            nas_root=Path(self.nas_root) if self.nas_root else base.nas_root,
            work_root=Path(self.work_root) if self.work_root else base.work_root,
            pipelines_dir=Path(self.pipelines_dir) if self.pipelines_dir else base.pipelines_dir,
            cellprofiler=self.cellprofiler or base.cellprofiler,
        )
