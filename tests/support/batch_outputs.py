"""CellProfiler's per-batch outputs as ExportToSpreadsheet writes them (CSV tables in a
batch folder), for the merge tests."""

from __future__ import annotations

import csv
from pathlib import Path

EXPERIMENT_ROWS = [
    ["Key", "Value"],
    ["CellProfiler_Version", "4.2.8"],
    ["Pipeline_Pipeline", "CellProfiler Pipeline\nVersion:5\nModuleCount:12"],
]


def write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def make_batch(folder: Path, k: int, wells=("B02", "B03"), prefix="MyExpt_", nuclei=2) -> Path:
    """A batch's ExportToSpreadsheet output: images 1..len(wells), `nuclei` nuclei and
    one cell per nucleus in each; feature values encode (batch k, image, object)."""
    write_csv(
        folder / f"{prefix}Image.csv",
        [
            [
                "ImageNumber",
                "Metadata_Well",
                "Metadata_Site",
                "Count_Nuclei",
                "Intensity_MeanIntensity_DNA",
                "Texture_Contrast_DNA",
            ],
            *[[i, w, 1, nuclei, k + i / 10, "nan" if i == 1 else 0.5] for i, w in enumerate(wells, 1)],
        ],
    )
    objects = [(i, o) for i in range(1, len(wells) + 1) for o in range(1, nuclei + 1)]
    write_csv(
        folder / f"{prefix}Nuclei.csv",
        [
            ["ImageNumber", "ObjectNumber", "AreaShape_Area", "Intensity_MeanIntensity_DNA"],
            *[[i, o, 100.0 * k + 10 * i + o, "nan" if o == 1 else 0.25] for i, o in objects],
        ],
    )
    write_csv(
        folder / f"{prefix}Cells.csv",
        [
            ["ImageNumber", "ObjectNumber", "Parent_Nuclei", "AreaShape_Area"],
            *[[i, o, o, 1000.0 * k + 10 * i + o] for i, o in objects],
        ],
    )
    write_csv(folder / f"{prefix}Experiment.csv", [*EXPERIMENT_ROWS, ["Run_Timestamp", f"2026-11-0{k}T10:00:00"]])
    return folder


def two_batches(tmp_path: Path) -> list[Path]:
    return [make_batch(tmp_path / "src" / "batch_0001", 1), make_batch(tmp_path / "src" / "batch_0002", 2)]
