"""Register a synthetic plate acquisition and the demo pipelines in imagedb, as the
lab's ingest service and pipeline GUI would."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from cpp_dagster import paths
from cpp_dagster.demo.synthetic_plate import DYES, write_plate
from cpp_dagster.imagedb.rows import Image
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.settings import Settings

DEMO_PIPELINE = "demo-cellpainting"
DEMO_PIPELINE_FILE = "demo/demo_features.cppipe"
# Illumination correction first (one batch: the function needs every image set), then
# the features on the corrected images, reading the ICF_<dye>.npy files it wrote.
DEMO_ICF_PIPELINE = "demo-cellpainting-icf"
DEMO_ICF_PIPELINE_FILE = "demo/demo_icf.cppipe"
DEMO_FEATURES_ICF_PIPELINE_FILE = "demo/demo_features_icf.cppipe"
DEMO_CHANNEL_MAP = 1
DEMO_CP_VERSION = "5.0.0.dev784"


def demo_pipeline_meta(batch_size: int = 4) -> dict:
    return {
        "analysis_meta": {"description": "Demo Cell Painting features: nuclei, cells, cytoplasm"},
        "sub_analyses": [
            {
                "type": "cellprofiler",
                "sub_type": "features",
                "pipeline_file": DEMO_PIPELINE_FILE,
                "cp_version": DEMO_CP_VERSION,
                "batch_size": batch_size,
                "job_timeout": 1800,
            }
        ],
    }


def demo_icf_pipeline_meta(batch_size: int = 4) -> dict:
    return {
        "analysis_meta": {
            "description": "Demo Cell Painting with illumination correction: "
            "ICF per dye, then features on the corrected images"
        },
        "sub_analyses": [
            {
                "type": "cellprofiler",
                "sub_type": "icf",
                "pipeline_file": DEMO_ICF_PIPELINE_FILE,
                "cp_version": DEMO_CP_VERSION,
                "batch_size": 0,
                "job_timeout": 1800,
            },
            {
                "type": "cellprofiler",
                "sub_type": "features",
                "pipeline_file": DEMO_FEATURES_ICF_PIPELINE_FILE,
                "cp_version": DEMO_CP_VERSION,
                "batch_size": batch_size,
                "use_icf": True,
                "job_timeout": 1800,
            },
        ],
    }


def install_demo_pipeline(db: ImageDB, settings: Settings, *, batch_size: int = 4) -> None:
    """The bundled .cppipe files into the NAS pipelines folder (`demo/`); the demo
    pipelines into imagedb."""
    target_dir = settings.pipelines_dir / Path(DEMO_PIPELINE_FILE).parent
    target_dir.mkdir(parents=True, exist_ok=True)
    bundled = resources.files("cpp_dagster.demo").joinpath("pipelines")
    for source in bundled.iterdir():
        if source.name.endswith(".cppipe"):
            with resources.as_file(source) as path:
                shutil.copyfile(path, target_dir / source.name)
    db.put_channel_map(DEMO_CHANNEL_MAP, {i + 1: dye for i, dye in enumerate(DYES)})
    db.put_pipeline(DEMO_PIPELINE, demo_pipeline_meta(batch_size))
    db.put_pipeline(DEMO_ICF_PIPELINE, demo_icf_pipeline_meta(batch_size))


def register_plate(
    db: ImageDB,
    settings: Settings,
    *,
    barcode: str,
    wells: list[str],
    sites: list[int],
    seed: int = 1,
    z_planes: int = 1,
    finished: bool = True,
    dyes: list[str] | None = None,
    channel_map_id: int | None = None,
    size: int = 256,
    cell_scale: float = 1.0,
    compression: str = "lzw",
) -> int:
    """Generate the plate's images under `<NAS>/images/<barcode>/` (LZW-compressed TIFFs
    unless `compression` says otherwise) and register them; returns the plate acquisition
    id. With `dyes` (e.g. the 8 JUMP images), channel map `channel_map_id` (required then,
    so the demo's map is never replaced) is set to them (channel = position + 1); without,
    the demo's five dyes and channel map."""
    if dyes is not None and channel_map_id in (None, DEMO_CHANNEL_MAP):
        raise ValueError(
            f"a plate of its own dyes needs a channel map id of its own (not {DEMO_CHANNEL_MAP}, the demo's)"
        )
    channel_map_id = DEMO_CHANNEL_MAP if channel_map_id is None else channel_map_id
    folder = paths.under(settings.nas_root / "images", barcode, what="plate barcode")
    files = write_plate(
        Path(folder),
        barcode,
        wells,
        sites,
        seed=seed,
        z_planes=z_planes,
        size=size,
        dyes=dyes,
        compression=compression,
        cell_scale=cell_scale,
    )
    if dyes is not None:
        db.put_channel_map(channel_map_id, {i + 1: dye for i, dye in enumerate(dyes)})
    acq_id = db.add_plate_acquisition(
        barcode, channel_map_id=channel_map_id, folder=str(folder), project="demo", microscope="synthetic"
    )
    db.add_images(
        acq_id,
        barcode,
        [
            Image(well=f["well"], site=f["site"], channel=f["channel"], path=f["path"], z=f["z"], timepoint=1)
            for f in files
        ],
    )
    if finished:
        db.finish_plate_acquisition(acq_id)
    return acq_id


def plate_wells(count: int) -> list[str]:
    """The first `count` wells of a 384-well plate from B02, row by row (B02, B03, ...)."""
    return [f"{row}{col:02d}" for row in "BCDEFGHIJKLMNO" for col in range(2, 24)][:count]
