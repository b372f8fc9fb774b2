"""LoadData CSVs that public pipelines can read as they are: the metadata names the
Broad/JUMP and nf-core pipelines group and name files by (Metadata_Plate, Well, Site,
Row, Col, as in nf-core's JUMP example), and illumination functions under either naming
(`icf_naming`: pharmbio `ICF_<dye>`, broad `Illum<Ch>` from `<Plate>_Illum<Ch>.npy`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from cpp_dagster.analysis.loaddata import illumination_images, loaddata_csv, well_row_col
from cpp_dagster.analysis.planning import Batch, IcfNaming, ImageSet, PlanningError, SubAnalysisOptions

JUMP_EXAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "nf-core-cellpainting" / "load_data.example.csv"
JUMP_IMAGES = (
    "OrigDNA",
    "OrigER",
    "OrigRNA",
    "OrigAGP",
    "OrigMito",
    "OrigBrightfield",
    "OrigBrightfield_L",
    "OrigBrightfield_H",
)


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def batch(*wells: str) -> Batch:
    return Batch(0, tuple(ImageSet(1, w, 1, 0, tuple(f"/nas/p/{w}_{d}.tiff" for d in JUMP_IMAGES)) for w in wells))


def test_loaddata_carries_the_metadata_jump_pipelines_group_by_with_jumps_types():
    [jump] = rows(JUMP_EXAMPLE.read_text())
    [ours] = rows(loaddata_csv(batch("A01"), JUMP_IMAGES, plate_barcode="BR00117035", plate_acquisition_id=3))
    for column in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Row", "Metadata_Col"):
        assert column in jump and column in ours
        assert ours[column] == jump[column], column  # the same field of the same plate, the same text
    # and the pharmbio names stay
    assert (ours["Metadata_Barcode"], ours["Metadata_AcqID"]) == ("BR00117035", "3")


@pytest.mark.parametrize(
    "well, row_col",
    [("A01", (1, 1)), ("B02", (2, 2)), ("p24", (16, 24)), ("AF48", (32, 48)), ("B2", (2, 2)), ("odd-well", ("", ""))],
)
def test_well_row_and_column_are_plate_coordinates_as_integers(well, row_col):
    assert well_row_col(well) == row_col


def test_a_well_name_without_row_and_column_leaves_them_empty_and_blocks_nothing():
    text = loaddata_csv(batch("B02", "ctrl"), JUMP_IMAGES, plate_barcode="P", plate_acquisition_id=1)
    assert [(r["Metadata_Well"], r["Metadata_Row"], r["Metadata_Col"]) for r in rows(text)] == [
        ("B02", "2", "2"),
        ("ctrl", "", ""),
    ]


def test_icf_naming_defaults_to_pharmbio_and_reads_broad():
    base = {"pipeline_file": "a.cppipe"}
    assert SubAnalysisOptions.from_meta(base).icf_naming is IcfNaming.PHARMBIO
    assert SubAnalysisOptions.from_meta({**base, "icf_naming": None}).icf_naming is IcfNaming.PHARMBIO
    assert SubAnalysisOptions.from_meta({**base, "icf_naming": "broad"}).icf_naming is IcfNaming.BROAD
    assert SubAnalysisOptions.from_meta({**base, "icf_naming": " Broad "}).icf_naming is IcfNaming.BROAD


@pytest.mark.parametrize("value", ["jump", "ICF", 1, True, ["broad"]])
def test_unknown_icf_naming_is_a_readable_error_naming_both_choices(value):
    with pytest.raises(
        PlanningError,
        match=r"'icf_naming' must be 'pharmbio' \(files ICF_<dye>.npy\) or "
        r"'broad' \(files <Plate>_Illum<Ch>.npy.*got " + repr(value).replace("[", r"\["),
    ):
        SubAnalysisOptions.from_meta({"pipeline_file": "a.cppipe", "icf_naming": value})


def test_illumination_images_map_image_names_to_files_under_either_naming():
    assert illumination_images(["HOECHST", "MITO"], "pharmbio", "P1") == {
        "ICF_HOECHST": "ICF_HOECHST.npy",
        "ICF_MITO": "ICF_MITO.npy",
    }
    assert illumination_images(JUMP_IMAGES, IcfNaming.BROAD, "BR00117035") == {
        f"Illum{ch}": f"BR00117035_Illum{ch}.npy"
        for ch in ("DNA", "ER", "RNA", "AGP", "Mito", "Brightfield", "Brightfield_L", "Brightfield_H")
    }
    # a dye without the Orig prefix keeps its name
    assert illumination_images(["DNA"], "broad", "P") == {"IllumDNA": "P_IllumDNA.npy"}


@pytest.mark.parametrize("barcode", ["../P1", "a/b", ".."])
def test_broad_illumination_file_names_never_leave_the_results_folder(barcode):
    with pytest.raises(PlanningError, match="plate barcode .* cannot name the illumination files"):
        illumination_images(["OrigDNA"], "broad", barcode)


def test_two_dyes_with_one_broad_illumination_name_are_refused():
    with pytest.raises(PlanningError, match="OrigDNA, DNA do not give one illumination image each"):
        illumination_images(["OrigDNA", "DNA"], "broad", "P")


def test_broad_loaddata_names_the_plate_illumination_files_as_illum_images():
    text = loaddata_csv(
        batch("B02"),
        JUMP_IMAGES,
        plate_barcode="BR1",
        plate_acquisition_id=1,
        icf_folder="/nas/results/BR1/1/9",
        icf_naming="broad",
    )
    header = next(csv.reader(io.StringIO(text)))
    assert header[-3:] == ["FileName_IllumBrightfield_H", "PathName_IllumBrightfield_H", "URL_IllumBrightfield_H"]
    assert not any("ICF" in column for column in header)
    [row] = rows(text)
    assert (row["FileName_IllumDNA"], row["PathName_IllumDNA"]) == ("BR1_IllumDNA.npy", "/nas/results/BR1/1/9")
    assert unquote(urlparse(row["URL_IllumER"]).path) == "/nas/results/BR1/1/9/BR1_IllumER.npy"
