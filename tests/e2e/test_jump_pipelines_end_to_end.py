"""The public Broad/JUMP production pipelines, unmodified, as one two-step analysis through
the real sensor, job, CellProfiler and imagedb: the JUMP illumination pipeline writes
`<Plate>_Illum<Ch>.npy` for the 8 JUMP images of a synthetic plate (LZW-compressed 16-bit
TIFFs, as a Phenix writes them), and the JUMP v3 analysis pipeline, with `use_icf` and
`icf_naming: broad`, loads them as `Illum<Ch>` and measures nuclei, cells and cytoplasm on
the corrected images. The pipelines group by `Metadata_Plate` (and Well, Site), which the
LoadData CSVs carry."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tifffile
from dagster_helpers import launch, tick

from cpp_dagster.analysis.sub_analysis import work_dir
from cpp_dagster.features.columns import BATCH_COLUMN as BATCH_KEY

NF_CORE = Path(__file__).resolve().parents[1] / "fixtures" / "nf-core-cellpainting"
JUMP_IMAGES = [
    "OrigDNA",
    "OrigER",
    "OrigRNA",
    "OrigAGP",
    "OrigMito",
    "OrigBrightfield",
    "OrigBrightfield_L",
    "OrigBrightfield_H",
]
# The analysis pipeline's names for the corrected images (CorrectIlluminationApply).
CORRECTED = {
    "OrigDNA": "DNA",
    "OrigER": "ER",
    "OrigRNA": "RNA",
    "OrigAGP": "AGP",
    "OrigMito": "Mito",
    "OrigBrightfield": "Brightfield",
    "OrigBrightfield_L": "BFLow",
    "OrigBrightfield_H": "BFHigh",
}
JUMP_CHANNEL_MAP = 8
SIDE = 160  # a multiple of 10: the illumination pipeline resizes by 0.2 and back by 5


def jump_pipeline_meta() -> dict:
    return {
        "analysis_meta": {"description": "Broad/JUMP: illumination functions, then the v3 analysis"},
        "sub_analyses": [
            {
                "type": "cellprofiler",
                "sub_type": "icf",
                "pipeline_file": "nf-core/illumination.cppipe",
                "batch_size": 0,
                "job_timeout": 900,
            },
            {
                "type": "cellprofiler",
                "sub_type": "features",
                "pipeline_file": "nf-core/analysis.cppipe",
                "batch_size": 1,
                "use_icf": True,
                "icf_naming": "broad",
                "job_timeout": 900,
            },
        ],
    }


def test_jump_illumination_then_analysis_pipelines_run_unmodified_on_lzw_plate(lab, dagster_instance):
    from cpp_dagster.demo.register import register_plate

    (lab.settings.pipelines_dir / "nf-core").mkdir(parents=True)
    for name in ("illumination.cppipe", "analysis.cppipe"):
        shutil.copyfile(NF_CORE / name, lab.settings.pipelines_dir / "nf-core" / name)
    lab.db.put_pipeline("jump-cellpainting", jump_pipeline_meta())
    # One well, two sites of a few cells each (JUMP's MeasureTexture takes ~5 s of CPU per
    # cell), larger than the demo's: JUMP's nuclei are 15-90 px across.
    acq = register_plate(
        lab.db,
        lab.settings,
        barcode="JUMP-0001",
        wells=["B02"],
        sites=[1, 2],
        seed=2,
        dyes=JUMP_IMAGES,
        channel_map_id=JUMP_CHANNEL_MAP,
        size=SIDE,
        cell_scale=1.6,
    )
    image_files = sorted((lab.nas / "images" / "JUMP-0001").glob("*.tif"))
    assert len(image_files) == 16
    with tifffile.TiffFile(image_files[0]) as tif:  # as a Phenix writes them
        assert tif.pages[0].compression == tifffile.COMPRESSION.LZW and tif.pages[0].dtype == np.uint16
    submitted = lab.db.submit_analysis(acq, "jump-cellpainting")
    illum_sub, features_sub = submitted.sub_ids
    results = lab.nas / "results" / "JUMP-0001" / str(acq) / str(submitted.analysis_id)
    job_folder = f"results/JUMP-0001/{acq}/{submitted.analysis_id}"

    # 1. The illumination step: one batch of both image sets, grouped by Metadata_Plate.
    first = tick(dagster_instance)
    assert [r.tags["imagedb/sub_id"] for r in first.run_requests] == [str(illum_sub)]
    assert launch(dagster_instance, first.run_requests[0]).status == dg.DagsterRunStatus.SUCCESS
    sub = lab.db.sub_analysis(illum_sub)
    assert sub.finish and sub.error is None
    illum = {}
    for image in JUMP_IMAGES:
        name = f"JUMP-0001_Illum{image.removeprefix('Orig')}.npy"
        assert f"{job_folder}/{name}" in sub.result["file_list"]
        illum[image] = np.load(results / name)
        assert illum[image].shape == (SIDE, SIDE) and np.isfinite(illum[image]).all()
    assert len(list(results.glob("JUMP-0001_Illum*.npy"))) == 8

    # 2. The analysis step: one batch per site, its LoadData CSVs name the Illum<Ch> files.
    second = tick(dagster_instance)
    assert [r.tags["imagedb/sub_id"] for r in second.run_requests] == [str(features_sub)]
    launch(dagster_instance, second.run_requests[0])  # its outcome in imagedb is checked below
    batches = sorted(work_dir(lab.settings, features_sub).glob("batch_*"))
    assert len(batches) == 2
    [row] = list(csv.DictReader(open(batches[0] / "loaddata.csv")))
    assert (row["Metadata_Plate"], row["Metadata_Well"], row["Metadata_Row"], row["Metadata_Col"]) == (
        "JUMP-0001",
        "B02",
        "2",
        "2",
    )
    assert (row["FileName_IllumDNA"], row["PathName_IllumDNA"]) == ("JUMP-0001_IllumDNA.npy", str(results))

    image = pq.read_table(results / "Image.parquet")
    assert image.num_rows == 2
    assert image["Metadata_Plate"].to_pylist() == ["JUMP-0001", "JUMP-0001"]
    # One row per object: each table has as many rows per image as the Image table counts.
    keys = image[BATCH_KEY].to_pylist()
    for objects in ("Nuclei", "Cells", "Cytoplasm"):
        table = pq.read_table(results / f"{objects}.parquet", columns=[BATCH_KEY, "ObjectNumber"])
        counts = dict(zip(*np.unique(table[BATCH_KEY].to_numpy(zero_copy_only=False), return_counts=True)))
        assert [counts.get(k, 0) for k in keys] == image[f"Count_{objects}"].to_pylist()
        assert table.num_rows > 0
    # The synthetic cells are found: every site has a few whole nuclei, one cell each.
    assert all(n >= 2 for n in image["Count_Nuclei"].to_pylist())
    assert image["Count_Cells"].to_pylist() == image["Count_Nuclei"].to_pylist()

    # The measured images are the raw ones divided by the illumination step's functions.
    for r in image.to_pylist():
        for orig, corrected in CORRECTED.items():
            raw = tifffile.imread(Path(r[f"PathName_{orig}"]) / r[f"FileName_{orig}"]) / 65535.0
            expected = np.clip(raw / illum[orig], 0.0, 1.0).mean()
            assert r[f"Intensity_MeanIntensity_{corrected}"] == pytest.approx(expected, rel=1e-4)
        dna = tifffile.imread(Path(r["PathName_OrigDNA"]) / r["FileName_OrigDNA"]) / 65535.0
        assert abs(r["Intensity_MeanIntensity_DNA"] / dna.mean() - 1) > 0.01  # the division mattered
    nuclei = pq.read_table(results / "Nuclei.parquet")
    assert pc.min(nuclei["Intensity_MeanIntensity_DNA"]).as_py() > 0

    # imagedb: the analysis step finished, and with it the analysis.
    sub = lab.db.sub_analysis(features_sub)
    assert sub.finish and sub.error is None, sub.status
    assert sub.status["message"] == "2 / 2 batches finished, ~0.0 h left"
    for table in ("Image", "Nuclei", "Cells", "Cytoplasm"):
        assert f"{job_folder}/{table}.parquet" in sub.result["file_list"]
    # The single-cell table: one row per cell, JUMP's compartments side by side.
    single_cell = pq.read_table(results / "single_cell.parquet")
    assert single_cell.num_rows == sum(image["Count_Cells"].to_pylist())
    assert any(c.startswith("Cytoplasm_") for c in single_cell.column_names)
    assert lab.db.analysis(submitted.analysis_id)["finish"] is not None
    assert tick(dagster_instance).run_requests == []  # nothing runs twice
