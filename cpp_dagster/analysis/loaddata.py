"""The LoadData CSV of a batch, and the names of the illumination files it points at.

Pure functions: no database, no files. The CSV carries, per image set, each dye's file
and folder, the illumination function of each dye when the sub-analysis uses them, and
the metadata columns community pipelines group and export by (Metadata_Plate, _Well,
_Site, _Row, _Col, ...).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from cpp_dagster import paths
from cpp_dagster.analysis.planning import Batch, IcfNaming, PlanningError


def icf_file_name(dye: str) -> str:
    """The pharmbio name of a dye's illumination function file."""
    return f"ICF_{dye}.npy"


def illumination_images(dyes: Sequence[str], naming: IcfNaming | str, plate_barcode: str) -> dict[str, str]:
    """CellProfiler image name -> file name of each dye's illumination function, in dye
    order: `ICF_<dye>` -> `ICF_<dye>.npy` (pharmbio), or `Illum<Ch>` -> `<Plate>_Illum<Ch>.npy`
    (broad; `<Ch>` = the dye without its `Orig` prefix)."""
    naming = IcfNaming.parse(naming)
    if naming is IcfNaming.PHARMBIO:
        images = {f"ICF_{dye}": icf_file_name(dye) for dye in dyes}
    else:
        try:
            plate = paths.component(plate_barcode, "plate barcode")
        except paths.UnsafePathError as e:
            raise PlanningError(f"{e}: it cannot name the illumination files <Plate>_Illum<Ch>.npy") from None
        images = {f"Illum{dye.removeprefix('Orig')}": f"{plate}_Illum{dye.removeprefix('Orig')}.npy" for dye in dyes}
    if len(images) != len(dyes):  # broad: e.g. the dyes DNA and OrigDNA are both IllumDNA
        raise PlanningError(
            f"dyes {', '.join(dyes)} do not give one illumination image each with icf_naming {naming.value!r}"
        )
    for file_name in images.values():
        try:
            paths.component(file_name, "illumination function file")
        except paths.UnsafePathError as e:
            raise PlanningError(str(e)) from None
    return images


_WELL = re.compile(r"^([A-Za-z]+)0*(\d+)$")


def well_row_col(well: str) -> tuple[int, int] | tuple[str, str]:
    """`B02` -> (2, 2): the plate row (A = 1, ..., Z = 26, AA = 27 on 1536-well plates) and
    column as integers, as Phenix/JUMP LoadData CSVs carry them (`Metadata_Row`,
    `Metadata_Col`); ("", "") for a well name not of that form."""
    m = _WELL.match(well)
    if not m:
        return "", ""
    row = 0
    for letter in m.group(1).upper():
        row = row * 26 + ord(letter) - ord("A") + 1
    return row, int(m.group(2))


METADATA_COLUMNS = (
    "Metadata_Barcode",
    "Metadata_Well",
    "Metadata_Site",
    "Metadata_AcqID",
    "Metadata_z",
    "Metadata_Timepoint",
    "Metadata_Plate",
    "Metadata_Row",
    "Metadata_Col",
)
"""The LoadData CSV's metadata, after the image columns: pharmbio's names, then the names
public (Broad/JUMP, nf-core) pipelines group and name files by. Metadata_Plate is the
plate barcode; Metadata_Row/Metadata_Col are integers (B02 -> 2, 2), as in JUMP."""


def loaddata_csv(
    batch: Batch,
    dyes: Sequence[str],
    *,
    plate_barcode: str,
    plate_acquisition_id: int,
    icf_folder: str | None = None,
    icf_naming: IcfNaming | str = IcfNaming.PHARMBIO,
) -> str:
    """The LoadData CSV of one batch: per dye FileName/PathName/URL, the metadata
    columns (METADATA_COLUMNS) and, with an ICF folder, FileName/PathName/URL of each
    illumination image (`illumination_images`: ICF_<dye>, or Illum<Ch> when broad)."""
    icf_images = illumination_images(dyes, icf_naming, plate_barcode) if icf_folder is not None else {}
    header = [f"{kind}_{dye}" for dye in dyes for kind in ("FileName", "PathName", "URL")]
    header += METADATA_COLUMNS
    header += [f"{kind}_{image}" for image in icf_images for kind in ("FileName", "PathName", "URL")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    icf_columns: list[str] = []  # the same on every row: built once
    for file_name in icf_images.values():
        p = PurePosixPath(icf_folder) / file_name
        icf_columns += [p.name, str(p.parent), _file_url(p, "ICF file path")]
    for s in batch.image_sets:
        row: list[Any] = []
        for path in s.paths:
            p = PurePosixPath(path)
            row += [p.name, str(p.parent), _file_url(p)]
        row += [
            plate_barcode,
            s.well,
            s.site,
            plate_acquisition_id,
            s.z,
            s.timepoint,
            plate_barcode,
            *well_row_col(s.well),
        ]
        writer.writerow(row + icf_columns)
    return out.getvalue()


def _file_url(path: PurePosixPath, what: str = "image path") -> str:
    if not path.is_absolute():
        raise PlanningError(f"{what} {str(path)!r} is not absolute")
    return path.as_uri()
