"""CellProfiler, in the project's CellProfiler environment, reads TIFFs as microscopes
write them: 16-bit LZW (Phenix, Operetta, ImageXpress), Deflate and Zstd, 8-bit, and a
full 2160x2160 field, with the intensities of the uncompressed file. Real CellProfiler
runs a tiny pipeline (LoadData, MeasureImageIntensity, ExportToSpreadsheet) on a LoadData
CSV the project writes. That the synthetic plate writes LZW by default:
tests/integration/test_synthetic_plate_writes_lzw_tiffs.py."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cpp_dagster.analysis import cellprofiler, loaddata, planning
from cpp_dagster.demo import synthetic_plate
from cpp_dagster.settings import PROJECT_ROOT

CP_PYTHON = PROJECT_ROOT / ".venv-cp" / "bin" / "python"
DEMO_DIR = Path(synthetic_plate.__file__).parent
# image name -> (bits, compression)
FORMATS = {
    "U16none": (16, "none"),
    "U16lzw": (16, "lzw"),
    "U16deflate": (16, "deflate"),
    "U16zstd": (16, "zstd"),
    "U8none": (8, "none"),
    "U8lzw": (8, "lzw"),
}
TIFF_CODE = {
    "none": tifffile.COMPRESSION.NONE,
    "lzw": tifffile.COMPRESSION.LZW,
    "deflate": tifffile.COMPRESSION.ADOBE_DEFLATE,
    "zstd": tifffile.COMPRESSION.ZSTD,
}
BIG = "Phenix2160"  # a 2160x2160 field, LZW

BUILD_PIPELINE = """
import pathlib, sys
sys.path.insert(0, sys.argv[1])
from build_pipeline import _set_list, assemble, export_module, headless, load_data_module, quiet_logging, write_pipeline
headless(); quiet_logging()
from cellprofiler.modules.measureimageintensity import MeasureImageIntensity
measure = MeasureImageIntensity()
_set_list(measure.images_list, sys.argv[3].split(","))
measure.wants_objects.value = False
measure.wants_percentiles.value = False
sys.exit(0 if write_pipeline(assemble([load_data_module(), measure, export_module()]), pathlib.Path(sys.argv[2])) else 1)
"""


def measure_intensity_pipeline(path: Path, images: list[str]) -> Path:
    """LoadData -> MeasureImageIntensity(images) -> ExportToSpreadsheet, built with the
    cellprofiler_core API in the CellProfiler environment (as `make pipeline` does)."""
    subprocess.run(
        [str(CP_PYTHON), "-c", BUILD_PIPELINE, str(DEMO_DIR), str(path), ",".join(images)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return path


def test_cellprofiler_reads_compressed_8_and_16_bit_and_2160px_tiffs_with_uncompressed_intensities(tmp_path):
    sixteen = synthetic_plate.render_site(5, "B02", 1, size=256, dyes=["HOECHST"])["HOECHST"]
    eight = (sixteen >> 4).clip(0, 255).astype(np.uint8)
    pixels = {name: (sixteen if bits == 16 else eight) for name, (bits, _) in FORMATS.items()}
    pixels[BIG] = np.tile(sixteen, (9, 9))[:2160, :2160]
    paths = []
    for name, image in pixels.items():
        compression = FORMATS.get(name, (16, "lzw"))[1]
        path = tmp_path / "images" / f"{name}.tif"
        path.parent.mkdir(exist_ok=True)
        synthetic_plate.write_tiff(path, image, compression)
        with tifffile.TiffFile(path) as tif:  # written as named
            assert tif.pages[0].compression == TIFF_CODE[compression] and tif.pages[0].dtype == image.dtype
        paths.append(str(path))
    names = list(pixels)
    batch_dir = tmp_path / "batch_0000"
    batch_dir.mkdir()
    batch = planning.Batch(0, (planning.ImageSet(1, "B02", 1, 0, tuple(paths)),))
    (batch_dir / "loaddata.csv").write_text(
        loaddata.loaddata_csv(batch, names, plate_barcode="TIFF", plate_acquisition_id=1)
    )

    outcome = cellprofiler.run_batch(
        cellprofiler=str(PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler"),
        pipeline=measure_intensity_pipeline(tmp_path / "measure.cppipe", names),
        batch_dir=batch_dir,
        expected_image_sets=1,
        timeout_s=600,
        echo=lambda line: None,
    )

    with open(Path(outcome.output_dir) / "MyExpt_Image.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    mean = {name: float(row[f"Intensity_MeanIntensity_{name}"]) for name in names}
    # LoadData rescales by the type's range: 16-bit / 65535, 8-bit / 255.
    for name, (bits, _) in FORMATS.items():
        reference = "U16none" if bits == 16 else "U8none"
        assert mean[name] == mean[reference], name  # bit-identical to the uncompressed file
        assert mean[name] == pytest.approx(pixels[name].mean() / (2**bits - 1), rel=1e-6)
    assert float(row[f"Intensity_TotalArea_{BIG}"]) == 2160 * 2160
    assert mean[BIG] == pytest.approx(pixels[BIG].mean() / 65535, rel=1e-6)
