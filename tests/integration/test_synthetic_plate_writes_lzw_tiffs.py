"""The synthetic plate (the demo's and the tests') writes 16-bit LZW TIFFs by default, of
any dyes and size, registered in a real imagedb; uncompressed on request, with the same
pixels. CellProfiler reading them: tests/e2e/test_microscope_tiff_formats.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cpp_dagster.demo import synthetic_plate
from cpp_dagster.demo.register import register_plate


def test_synthetic_plate_writes_lzw_tiffs_of_any_dyes_and_size_by_default(db, settings):
    jump = [
        "OrigDNA",
        "OrigER",
        "OrigRNA",
        "OrigAGP",
        "OrigMito",
        "OrigBrightfield",
        "OrigBrightfield_L",
        "OrigBrightfield_H",
    ]
    acq = register_plate(db, settings, barcode="LZW", wells=["B02"], sites=[1], dyes=jump, channel_map_id=8, size=120)
    assert db.channel_map(8) == {i + 1: dye for i, dye in enumerate(jump)}
    files = sorted(Path(im.path) for im in db.images(acq))
    assert len(files) == 8
    for path in files:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert (page.compression, page.dtype, page.shape) == (tifffile.COMPRESSION.LZW, np.uint16, (120, 120))
    uncompressed = synthetic_plate.write_plate(
        settings.nas_root / "plain", "PLAIN", ["B02"], [1], seed=1, size=120, dyes=jump, compression="none"
    )
    for record in uncompressed:
        with tifffile.TiffFile(record["path"]) as tif:
            assert tif.pages[0].compression == tifffile.COMPRESSION.NONE
        same = settings.nas_root / "images" / "LZW" / Path(record["path"]).name.replace("PLAIN", "LZW")
        assert np.array_equal(tifffile.imread(record["path"]), tifffile.imread(same))
    with pytest.raises(ValueError, match="compression 'jpeg' is not one of none, lzw, deflate, zstd"):
        synthetic_plate.write_plate(settings.nas_root / "x", "X", ["B02"], [1], seed=1, compression="jpeg")
