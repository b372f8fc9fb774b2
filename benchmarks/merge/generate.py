"""Deterministic synthetic CellProfiler ExportToSpreadsheet output, for the merge benchmark.

    python benchmarks/merge/generate.py --preset quick            # a few tens of MB
    python benchmarks/merge/generate.py --preset plate            # ~3 GB: 384 wells x 9 sites, 96 batches
    python benchmarks/merge/generate.py --preset plate --scale 2  # the doubled plate (two plates, 192 batches)
    python benchmarks/merge/generate.py --preset jump             # JUMP width, ~2,000 columns per compartment

Layout (what a batch of the project's CellProfiler runs leaves behind):

    OUT/<preset>[-x<scale>]/src/batch_NNNN/MyExpt_{Image,Nuclei,Cells,Cytoplasm,Experiment}.csv

- ImageNumber restarts at 1 in every batch (each batch is its own CellProfiler run).
- Object tables have ImageNumber, ObjectNumber, CellProfiler's integer bookkeeping columns
  (Number_Object_Number, Parent_*, Children_*_Count) and ~1,000 float features with
  CellProfiler's names (AreaShape_*, Intensity_*_<dye>, Location_*, Granularity_*,
  RadialDistribution_*, Correlation_*, Neighbors_*, Texture_*_<dye>_<scale>_<angle>_256).
- The Image table has Metadata_Barcode/Plate/Well/Site, FileName_/PathName_/URL_/MD5Digest_
  per channel, Count_<object>, ImageQuality_*, Intensity_*, Threshold_*, ExecutionTime_* ...
- Floats are written as shortest round-trip decimals (what Python's repr gives for
  CellProfiler's float64 values); missing values as lowercase `nan`, sprinkled into the
  texture, correlation, radial and image-quality columns.
- Every batch has the same columns (so the plain routes and the old method can read it).

Values are drawn with numpy per (batch, table) from a seed derived from both, so the
output is the same on every run and independent of the number of worker processes;
rows are written with pyarrow.csv.write_csv (no per-value Python loops), batches in parallel.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

DYES = ["DNA", "ER", "RNA", "AGP", "Mito"]
OBJECTS = ["Nuclei", "Cells", "Cytoplasm"]
PREFIX = "MyExpt_"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "out"
ROWS, COLS = "ABCDEFGHIJKLMNOP", 24  # a 384-well plate


@dataclass(frozen=True)
class Preset:
    wells: int  # wells per plate
    sites: int  # sites per well
    wells_per_batch: int
    objects_per_image: float  # mean (Poisson) number of nuclei per site
    features: int  # float feature columns per object table


PRESETS = {
    # 8 batches x 4 wells x 3 sites, full-width tables: ~45 MB, a few seconds
    "quick": Preset(wells=32, sites=3, wells_per_batch=4, objects_per_image=8, features=1000),
    # 384 wells x 9 sites in 96 batches of 4 wells: ~3 GB
    "plate": Preset(wells=384, sites=9, wells_per_batch=4, objects_per_image=17, features=1000),
    # JUMP width: ~2,000 features per compartment; 96 wells x 9 sites in 24 batches: ~1.9 GB
    "jump": Preset(wells=96, sites=9, wells_per_batch=4, objects_per_image=17, features=2000),
    # the same width, small: 4 batches of 4 wells x 3 sites (~50 MB), for a quick look
    "quick-jump": Preset(wells=16, sites=3, wells_per_batch=4, objects_per_image=8, features=2000),
}


# --- column names -----------------------------------------------------------------


def _pairs(items):
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1 :]]


def object_feature_names(n: int) -> list[str]:
    """The first `n` of CellProfiler's float feature columns of an object table."""
    shape = [
        "Area",
        "BoundingBoxArea",
        "BoundingBoxMaximum_X",
        "BoundingBoxMaximum_Y",
        "BoundingBoxMinimum_X",
        "BoundingBoxMinimum_Y",
        "Center_X",
        "Center_Y",
        "Compactness",
        "ConvexArea",
        "Eccentricity",
        "EquivalentDiameter",
        "EulerNumber",
        "Extent",
        "FormFactor",
        "MajorAxisLength",
        "MaxFeretDiameter",
        "MaximumRadius",
        "MeanRadius",
        "MedianRadius",
        "MinFeretDiameter",
        "MinorAxisLength",
        "Orientation",
        "Perimeter",
        "Solidity",
    ]
    shape += [
        f"{kind}_{i}_{j}"
        for kind in ("CentralMoment", "NormalizedMoment", "SpatialMoment")
        for i in range(3)
        for j in range(4)
    ]
    shape += [f"HuMoment_{i}" for i in range(7)] + [f"InertiaTensor_{a}_{b}" for a in range(2) for b in range(2)]
    shape += [f"Zernike_{n_}_{m}" for n_ in range(10) for m in range(n_ % 2, n_ + 1, 2)]
    names = [f"AreaShape_{s}" for s in shape]
    intensity = [
        "IntegratedIntensity",
        "MeanIntensity",
        "StdIntensity",
        "MinIntensity",
        "MaxIntensity",
        "IntegratedIntensityEdge",
        "MeanIntensityEdge",
        "StdIntensityEdge",
        "MinIntensityEdge",
        "MaxIntensityEdge",
        "MassDisplacement",
        "LowerQuartileIntensity",
        "MedianIntensity",
        "MADIntensity",
        "UpperQuartileIntensity",
    ]
    names += [f"Intensity_{m}_{d}" for d in DYES for m in intensity]
    names += ["Location_Center_X", "Location_Center_Y", "Location_Center_Z"]
    names += [
        f"Location_{m}_{axis}_{d}" for d in DYES for m in ("CenterMassIntensity", "MaxIntensity") for axis in "XYZ"
    ]
    names += [f"Granularity_{i}_{d}" for d in DYES for i in range(1, 17)]
    names += [
        f"RadialDistribution_{m}_{d}_{b}of4"
        for d in DYES
        for m in ("FracAtD", "MeanFrac", "RadialCV")
        for b in range(1, 5)
    ]
    for a, b in _pairs(DYES):
        names += [
            f"Correlation_Correlation_{a}_{b}",
            f"Correlation_Overlap_{a}_{b}",
            f"Correlation_K_{a}_{b}",
            f"Correlation_K_{b}_{a}",
            f"Correlation_Manders_{a}_{b}",
            f"Correlation_Manders_{b}_{a}",
            f"Correlation_RWC_{a}_{b}",
            f"Correlation_RWC_{b}_{a}",
        ]
    names += [
        f"Neighbors_{m}_{k}"
        for k in ("Adjacent", "5")
        for m in (
            "NumberOfNeighbors",
            "PercentTouching",
            "FirstClosestObjectNumber",
            "FirstClosestDistance",
            "SecondClosestObjectNumber",
            "SecondClosestDistance",
            "AngleBetweenNeighbors",
        )
    ]
    texture = [
        "AngularSecondMoment",
        "Contrast",
        "Correlation",
        "DifferenceEntropy",
        "DifferenceVariance",
        "Entropy",
        "InfoMeas1",
        "InfoMeas2",
        "InverseDifferenceMoment",
        "SumAverage",
        "SumEntropy",
        "SumVariance",
        "Variance",
    ]
    names += [f"Texture_{t}_{d}_{s}_{a:02d}_256" for s in (3, 5, 10) for d in DYES for t in texture for a in range(4)]
    # JUMP width (~2,000 per compartment): the larger texture scales and Zernike radial
    # features of the JUMP pipelines, after the ones above (so narrower presets keep theirs)
    names += [f"Texture_{t}_{d}_{s}_{a:02d}_256" for s in (15, 20) for d in DYES for t in texture for a in range(4)]
    names += [
        f"RadialDistribution_Zernike{kind}_{d}_{n_}_{m}"
        for d in DYES
        for kind in ("Magnitude", "Phase")
        for n_ in range(10)
        for m in range(n_ % 2, n_ + 1, 2)
    ]
    if n > len(names):
        raise ValueError(f"at most {len(names)} object features")
    return names[:n]


def object_columns(obj: str, features: int) -> tuple[list[str], list[str]]:
    """(integer bookkeeping columns after ImageNumber/ObjectNumber, float features)."""
    ints = {
        "Nuclei": ["Number_Object_Number", "Children_Cells_Count", "Children_Cytoplasm_Count"],
        "Cells": ["Number_Object_Number", "Parent_Nuclei", "Children_Cytoplasm_Count"],
        "Cytoplasm": ["Number_Object_Number", "Parent_Cells", "Parent_Nuclei"],
    }[obj]
    return ints, object_feature_names(features)


def image_columns() -> tuple[list[str], list[str], list[str]]:
    """(text columns, integer columns, float columns) of the Image table, after ImageNumber."""
    text = ["Metadata_Barcode", "Metadata_Plate", "Metadata_Well", "Metadata_FileLocation"]
    for d in DYES:
        text += [f"FileName_Orig{d}", f"PathName_Orig{d}", f"URL_Orig{d}", f"MD5Digest_Orig{d}"]
    ints = ["Metadata_Site", "Metadata_Row", "Metadata_Col", "Group_Number", "Group_Index"]
    ints += [f"Count_{o}" for o in OBJECTS] + [f"Height_Orig{d}" for d in DYES] + [f"Width_Orig{d}" for d in DYES]
    ints += [
        f"ModuleError_{i:02d}{m}"
        for i, m in enumerate(
            [
                "Images",
                "Metadata",
                "NamesAndTypes",
                "Groups",
                "CorrectIlluminationApply",
                "IdentifyPrimaryObjects",
                "IdentifySecondaryObjects",
                "IdentifyTertiaryObjects",
                "MeasureObjectIntensity",
                "MeasureTexture",
                "MeasureGranularity",
                "MeasureImageQuality",
                "ExportToSpreadsheet",
            ],
            1,
        )
    ]
    floats = [f"ExecutionTime_{i:02d}Module{i}" for i in range(1, 14)]
    floats += [f"Scaling_Orig{d}" for d in DYES]
    quality = [
        "FocusScore",
        "LocalFocusScore_20",
        "Correlation_20",
        "PowerLogLogSlope",
        "MADIntensity",
        "MaxIntensity",
        "MeanIntensity",
        "MedianIntensity",
        "MinIntensity",
        "PercentMaximal",
        "PercentMinimal",
        "StdIntensity",
        "TotalArea",
        "TotalIntensity",
        "ThresholdOtsu",
    ]
    floats += [f"ImageQuality_{q}_Orig{d}" for d in DYES for q in quality]
    floats += [
        f"Intensity_{m}_Orig{d}"
        for d in DYES
        for m in (
            "TotalIntensity",
            "MeanIntensity",
            "MedianIntensity",
            "StdIntensity",
            "MADIntensity",
            "MaxIntensity",
            "MinIntensity",
            "TotalArea",
            "PercentMaximal",
            "LowerQuartileIntensity",
            "UpperQuartileIntensity",
        )
    ]
    floats += [f"Granularity_{i}_Orig{d}" for d in DYES for i in range(1, 17)]
    floats += [
        f"Threshold_{m}_{o}"
        for o in OBJECTS[:2]
        for m in ("FinalThreshold", "OrigThreshold", "GuideThreshold", "SumOfEntropies", "WeightedVariance")
    ]
    floats += [
        f"Texture_{t}_Orig{d}_3_{a:02d}_256"
        for d in DYES
        for t in ("AngularSecondMoment", "Contrast", "Correlation", "Entropy", "Variance")
        for a in range(4)
    ]
    return text, ints, floats


# --- values ------------------------------------------------------------------------


def _floats(rng: np.random.Generator, names: list[str], rows: int) -> list[pa.Array]:
    """One float64 column per name, magnitudes by feature family; `nan` sprinkled into the
    families where CellProfiler leaves values missing (tiny objects, flat images)."""
    # one log-uniform scale per column, values uniform within it: full-precision floats
    scales = 10.0 ** rng.uniform(-3, 3.5, size=len(names))
    values = rng.random((len(names), rows)) * scales[:, None]
    out = []
    for i, name in enumerate(names):
        col = values[i]
        if name.startswith(("Texture_", "Correlation_", "RadialDistribution_", "ImageQuality_")):
            col[rng.random(rows) < 0.01] = np.nan
        out.append(pa.array(col, pa.float64()))
    return out


def _write(path: Path, table: pa.Table) -> int:
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="none", quoting_header="none", batch_size=4096))
    return path.stat().st_size


def _experiment(path: Path, batch: str) -> int:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["Key", "Value"],
                ["CellProfiler_Version", "4.2.8"],
                ["ChannelType_DNA", "Grayscale"],
                ["Modification_Timestamp", "2026-11-03T10:00:00.000000"],
                [
                    "Pipeline_Pipeline",
                    "CellProfiler Pipeline: http://www.cellprofiler.org\nVersion:5\n"
                    "DateRevision:428\nModuleCount:13\nHasImagePlaneDetails:False\n\n"
                    'Images:[module_num:1|svn_version:"Unknown"|variable_revision_number:2]',
                ],
                ["Run_Timestamp", f"2026-11-03T10:{int(batch[-4:]) % 60:02d}:00.000000"],
            ]
        )
    return path.stat().st_size


def write_batch(args: tuple[Path, int, int, str, list[str], Preset]) -> int:
    """Write one batch folder; returns its CSV bytes."""
    folder, number, seed, barcode, wells, p = args
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, number, 0])
    images = [(w, s) for w in wells for s in range(1, p.sites + 1)]
    n_img = len(images)
    counts = np.maximum(rng.poisson(p.objects_per_image, size=n_img), 1).astype(np.int64)
    written = 0

    # Image table
    text, ints, floats = image_columns()
    image_number = np.arange(1, n_img + 1, dtype=np.int64)
    cols: dict[str, pa.Array] = {"ImageNumber": pa.array(image_number)}
    well_of = [w for w, _ in images]
    site_of = [s for _, s in images]
    for name in text:
        if name == "Metadata_Barcode" or name == "Metadata_Plate":
            values = [barcode] * n_img
        elif name == "Metadata_Well":
            values = well_of
        elif name == "Metadata_FileLocation":
            values = [
                f"file:///nas/plates/{barcode}/Images/r{ord(w[0]) - 64:02d}c{int(w[1:]):02d}f{s:02d}p01-ch1sk1fk1fl1.tiff"
                for w, s in images
            ]
        else:
            kind, dye = name.split("_Orig")
            ch = DYES.index(dye) + 1
            fname = [f"r{ord(w[0]) - 64:02d}c{int(w[1:]):02d}f{s:02d}p01-ch{ch}sk1fk1fl1.tiff" for w, s in images]
            if kind == "FileName":
                values = fname
            elif kind == "PathName":
                values = [f"/nas/plates/{barcode}/Images"] * n_img
            elif kind == "URL":
                values = [f"file:///nas/plates/{barcode}/Images/{f}" for f in fname]
            else:  # MD5Digest
                values = [f"{x:016x}{y:016x}" for x, y in rng.integers(0, 2**63, size=(n_img, 2), dtype=np.int64)]
        cols[name] = pa.array(values, pa.string())
    for name in ints:
        if name == "Metadata_Site":
            v = np.array(site_of)
        elif name == "Metadata_Row":
            v = np.array([ord(w[0]) - 64 for w in well_of])
        elif name == "Metadata_Col":
            v = np.array([int(w[1:]) for w in well_of])
        elif name == "Group_Number":
            v = np.ones(n_img)
        elif name == "Group_Index":
            v = image_number
        elif name.startswith("Count_"):
            v = counts
        elif name.startswith(("Height_", "Width_")):
            v = np.full(n_img, 2160)
        else:  # ModuleError_*
            v = np.zeros(n_img)
        cols[name] = pa.array(np.asarray(v, dtype=np.int64))
    cols.update(zip(floats, _floats(rng, floats, n_img)))
    written += _write(folder / f"{PREFIX}Image.csv", pa.table(cols))

    # object tables: one nucleus, one cell and one cytoplasm per object
    rows = int(counts.sum())
    img = np.repeat(image_number, counts)
    obj = np.concatenate([np.arange(1, c + 1, dtype=np.int64) for c in counts])
    for o in OBJECTS:
        ints, features = object_columns(o, p.features)
        cols = {"ImageNumber": pa.array(img), "ObjectNumber": pa.array(obj)}
        for name in ints:
            cols[name] = pa.array(obj if not name.startswith("Children_") else np.ones(rows, dtype=np.int64))
        feature_cols = _floats(rng, features, rows)
        # integer-valued features, as CellProfiler writes them
        for i, name in enumerate(features):
            if name in (
                "AreaShape_Area",
                "AreaShape_BoundingBoxArea",
                "AreaShape_EulerNumber",
                "Neighbors_NumberOfNeighbors_Adjacent",
                "Neighbors_NumberOfNeighbors_5",
            ) or name.startswith("AreaShape_BoundingBox"):
                feature_cols[i] = pa.array(rng.integers(1, 5000, size=rows, dtype=np.int64))
        cols.update(zip(features, feature_cols))
        written += _write(folder / f"{PREFIX}{o}.csv", pa.table(cols))
    written += _experiment(folder / f"{PREFIX}Experiment.csv", folder.name)
    return written


def plate_wells(n: int) -> list[str]:
    wells = [f"{r}{c:02d}" for r in ROWS for c in range(1, COLS + 1)]
    return wells[:n]


def generate(
    preset: str,
    scale: int = 1,
    out: Path = DEFAULT_OUT,
    seed: int = 20261103,
    workers: int | None = None,
    force: bool = False,
) -> Path:
    """Write the preset's batches under `out/<preset>[-x<scale>]/src` (unless they are
    already there, complete); returns that src folder."""
    p = PRESETS[preset]
    root = Path(out) / (preset if scale == 1 else f"{preset}-x{scale}")
    src = root / "src"
    manifest = root / "manifest.json"
    if manifest.exists() and not force:
        return src
    if root.exists():
        shutil.rmtree(root)
    jobs = []
    number = 1
    for plate in range(scale):
        barcode = f"BR{20261103 + plate:08d}"
        wells = plate_wells(p.wells)
        for i in range(0, len(wells), p.wells_per_batch):
            jobs.append((src / f"batch_{number:04d}", number, seed, barcode, wells[i : i + p.wells_per_batch], p))
            number += 1
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        total = sum(pool.map(write_batch, jobs, chunksize=1))
    info = {
        "preset": preset,
        "scale": scale,
        "batches": len(jobs),
        "csv_bytes": total,
        "seconds": round(time.perf_counter() - t0, 1),
        **asdict(p),
    }
    manifest.write_text(json.dumps(info) + "\n")
    return src


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="output folder (default benchmarks/out)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--scale", type=int, default=1, help="number of plates (2 = the doubled plate)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="regenerate even if present")
    args = ap.parse_args(argv)
    src = generate(args.preset, args.scale, args.out, workers=args.workers, force=args.force)
    print((src.parent / "manifest.json").read_text().strip())
    print(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
