"""Planning: sub-analysis meta -> image sets -> batches -> LoadData CSV text."""

from __future__ import annotations

import csv
import io
import random
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

import pytest

from cpp_dagster.analysis.loaddata import loaddata_csv
from cpp_dagster.analysis.planning import (
    Batch,
    ImageSet,
    PlanningError,
    SubAnalysisOptions,
    parse_z_spec,
    plan,
)
from cpp_dagster.imagedb.rows import Image

CHANNELS = {1: "HOECHST", 2: "SYTO", 3: "MITO"}


def images(wells=("B02",), sites=(1,), zs=(0,), timepoints=(1,), channels=CHANNELS):
    return [
        Image(well=w, site=s, channel=c, z=z, timepoint=t, path=f"/nas/plate/t{t}/{w}_s{s}_z{z}_c{c}.tiff")
        for t in timepoints
        for w in wells
        for s in sites
        for z in zs
        for c in channels
    ]


def options(**meta) -> SubAnalysisOptions:
    return SubAnalysisOptions.from_meta({"pipeline_file": "features.cppipe", **meta})


def image_sets(p):
    return [s for b in p.batches for s in b.image_sets]


def keys(p):
    return [(s.timepoint, s.well, s.site, s.z) for s in image_sets(p)]


# --- z planes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, planes",
    [
        ("2-5,7", {2, 3, 4, 5, 7}),
        ("3", {3}),
        ("0", {0}),
        ("4-4", {4}),
        (" 2 - 3 , 9 ", {2, 3, 9}),
        ("1,1,2", {1, 2}),
    ],
)
def test_z_spec_reads_numbers_and_ranges(spec, planes):
    named = parse_z_spec(spec)
    assert {z for z in range(20) if z in named} == planes and named.count == len(planes)


@pytest.mark.parametrize("spec", ["", "a", "2-", "-3", "1,,2", "2..5", "1;2", "2-5-7", "1.5"])
def test_z_spec_with_bad_syntax_is_a_planning_error(spec):
    with pytest.raises(PlanningError, match="z"):
        parse_z_spec(spec)


def test_z_spec_reversed_range_is_an_error_naming_the_range():
    with pytest.raises(PlanningError, match="'5-2'.*end before start"):
        parse_z_spec("1,5-2")


@pytest.mark.parametrize("zs, middle", [((0, 1, 2, 3), 1), ((0, 1, 2), 1), ((5,), 5), ((3, 9, 4, 7), 4)])
def test_without_z_only_the_lower_middle_plane_is_used(zs, middle):
    p = plan(images(sites=(1, 2), zs=zs), CHANNELS, options())
    assert keys(p) == [(1, "B02", 1, middle), (1, "B02", 2, middle)]


def test_images_without_z_are_plane_0():
    ims = [Image("B02", 1, c, f"/nas/c{c}.tiff", z=None) for c in CHANNELS]
    assert keys(plan(ims, CHANNELS, options())) == [(1, "B02", 1, 0)]


def test_explicit_z_gives_one_image_set_per_plane():
    p = plan(images(sites=(1, 2), zs=(0, 1, 2, 3)), CHANNELS, options(z="1-2"))
    assert keys(p) == [(1, "B02", 1, 1), (1, "B02", 1, 2), (1, "B02", 2, 1), (1, "B02", 2, 2)]
    assert image_sets(p)[1].paths[0] == "/nas/plate/t1/B02_s1_z2_c1.tiff"


def test_z_selecting_no_existing_plane_is_an_error():
    with pytest.raises(PlanningError, match="no images in z planes '7'"):
        plan(images(zs=(0, 1)), CHANNELS, options(z="7"))


# --- filters, channels, order -----------------------------------------------------


def test_well_filter_is_case_insensitive():
    p = plan(images(wells=("B02", "b03", "C04")), CHANNELS, options(well_filter=["b03", "c04"]))
    assert [s.well for s in image_sets(p)] == ["B03", "C04"]


def test_site_filter_keeps_only_those_sites():
    p = plan(images(sites=(1, 2, 3, 4)), CHANNELS, options(site_filter=[4, 2]))
    assert [s.site for s in image_sets(p)] == [2, 4]


def test_channels_narrow_the_channel_map_in_channel_order():
    p = plan(images(), CHANNELS, options(channels=["MITO", "HOECHST"]))
    assert p.dyes == ("HOECHST", "MITO")
    assert image_sets(p)[0].paths == ("/nas/plate/t1/B02_s1_z0_c1.tiff", "/nas/plate/t1/B02_s1_z0_c3.tiff")


def test_images_of_channels_outside_the_map_are_ignored():
    p = plan(images(channels={1: "", 2: "", 9: ""}), {1: "HOECHST", 2: "SYTO"}, options())
    assert p.dyes == ("HOECHST", "SYTO") and len(image_sets(p)[0].paths) == 2


def test_unknown_dye_is_an_error_naming_it():
    with pytest.raises(PlanningError, match="ACTIN"):
        plan(images(), CHANNELS, options(channels=["HOECHST", "ACTIN"]))


def test_a_dye_on_two_channels_is_an_error():
    with pytest.raises(PlanningError, match="HOECHST"):
        plan(images(), {1: "HOECHST", 2: "HOECHST", 3: "MITO"}, options())


def test_image_sets_are_ordered_by_timepoint_well_site_z():
    ims = images(wells=("C02", "B10", "B02"), sites=(2, 1), zs=(1, 0), timepoints=(2, 3, 1))
    random.Random(7).shuffle(ims)
    got = keys(plan(ims, CHANNELS, options(z="0-1")))
    assert got == sorted(got) and len(got) == 3 * 3 * 2 * 2
    assert got[:5] == [(1, "B02", 1, 0), (1, "B02", 1, 1), (1, "B02", 2, 0), (1, "B02", 2, 1), (1, "B10", 1, 0)]


def test_timepoint_0_is_kept_apart_from_timepoint_1():
    p = plan(images(timepoints=(0, 1)), CHANNELS, options())
    assert [s.timepoint for s in image_sets(p)] == [0, 1]


# --- batches ----------------------------------------------------------------------


def test_batch_size_splits_into_consecutive_named_batches():
    p = plan(images(sites=range(1, 8)), CHANNELS, options(batch_size=3))
    assert [len(b.image_sets) for b in p.batches] == [3, 3, 1]
    assert [b.name for b in p.batches] == ["batch_0000", "batch_0001", "batch_0002"]
    assert [s.site for s in image_sets(p)] == list(range(1, 8))
    assert p.image_set_count == 7


@pytest.mark.parametrize("batch_size", [0, -5])
def test_batch_size_zero_or_negative_is_one_batch_of_all(batch_size):
    p = plan(images(sites=range(1, 8)), CHANNELS, options(batch_size=batch_size))
    assert [(b.name, len(b.image_sets)) for b in p.batches] == [("batch_0000", 7)]


# --- readable errors --------------------------------------------------------------


def test_no_images_after_filters_is_an_error_naming_the_filters():
    with pytest.raises(PlanningError, match=r"no images left.*Z99.*sites=\[3\]"):
        plan(images(), CHANNELS, options(well_filter=["Z99"], site_filter=[3]))


def test_empty_channel_map_is_an_error():
    with pytest.raises(PlanningError, match="channel map is empty"):
        plan(images(), {}, options())


def test_image_set_missing_a_channel_names_well_site_and_dye():
    ims = [
        im
        for im in images(wells=("B02", "B03"), sites=(1, 2))
        if not (im.well == "B03" and im.site == 2 and im.channel == 2)
    ]
    with pytest.raises(PlanningError, match=r"well B03 site 2 .*missing channel\(s\) SYTO"):
        plan(ims, CHANNELS, options())


def test_two_images_for_one_channel_is_an_error_naming_the_image_set_and_dye():
    ims = images(wells=("B02", "C05")) + [Image("C05", 1, 3, "/nas/other/C05_c3.tiff")]
    with pytest.raises(PlanningError, match=r"channel 3 \(MITO\).*well C05 site 1.*other/C05_c3"):
        plan(ims, CHANNELS, options())


# --- sub-analysis meta ------------------------------------------------------------


def test_meta_defaults():
    o = SubAnalysisOptions.from_meta({"pipeline_file": "qc.cppipe"})
    assert (o.pipeline_file, o.job_timeout, o.use_icf, o.batch_size) == ("qc.cppipe", 10800, False, 0)
    assert o.well_filter is o.site_filter is o.channels is o.z is o.priority is None


@pytest.mark.parametrize("z", [None, ""])
def test_meta_empty_z_means_the_middle_plane(z):
    o = options(z=z)
    assert o.z is None
    assert keys(plan(images(zs=(0, 1, 2)), CHANNELS, o)) == [(1, "B02", 1, 1)]


def test_meta_values_are_parsed():
    o = options(
        type="cellprofiler",
        batch_size="50",
        site_filter=[1, "2"],
        well_filter=["b02"],
        channels=["HOECHST"],
        z=3,
        use_icf=True,
        job_timeout=600,
        priority=1,
        cp_version="4.2.8",
    )
    assert (o.batch_size, o.site_filter, o.well_filter, o.channels) == (50, (1, 2), ("B02",), ("HOECHST",))
    assert (o.z, o.use_icf, o.job_timeout, o.priority, o.cp_version) == ("3", True, 600, 1, "4.2.8")


@pytest.mark.parametrize(
    "meta",
    [
        {"site_filter": ["a"]},
        {"site_filter": "12"},
        {"site_filter": [1.5]},
        {"well_filter": "B02"},
        {"well_filter": ["B02", 3]},
        {"channels": "HOECHST"},
        {"batch_size": "many"},
        {"job_timeout": [1]},
        {"use_icf": "false"},
        {"z": "2-"},
    ],
)
def test_meta_of_the_wrong_type_is_a_planning_error(meta):
    with pytest.raises(PlanningError):
        options(**meta)


def test_notebook_sub_analyses_are_refused():
    with pytest.raises(PlanningError, match="jupyter_notebook"):
        options(type="jupyter_notebook")


@pytest.mark.parametrize("meta", [{}, {"pipeline_file": ""}, {"pipeline_file": None}])
def test_missing_pipeline_file_is_an_error(meta):
    with pytest.raises(PlanningError, match="pipeline_file"):
        SubAnalysisOptions.from_meta(meta)


# The message names the key and what it may be, for the scientist who wrote the meta.
@pytest.mark.parametrize(
    "meta, message",
    [
        (
            {"job_timeout": -5},
            "'job_timeout' must be a whole number from 1 to 604800, in seconds (at most 7 days); got -5",
        ),
        ({"job_timeout": 0}, "'job_timeout' must be a whole number from 1 to 604800"),
        ({"job_timeout": 8 * 24 * 3600}, "'job_timeout' must be a whole number from 1 to 604800"),
        (
            {"job_timeout": "3h"},
            "'job_timeout' must be a whole number from 1 to 604800, in seconds (at most 7 days); got '3h'",
        ),
        ({"job_timeout": 1.5}, "got 1.5"),
        ({"job_timeout": True}, "got True"),
        (
            {"batch_size": "many"},
            "'batch_size' must be a whole number, in image sets per batch (0: one batch of all); got 'many'",
        ),
        ({"batch_size": [4]}, "'batch_size' must be a whole number"),
        ({"priority": "high"}, "'priority' must be a whole number from 1 to 9, in 1 = high, 9 = low; got 'high'"),
        ({"priority": 0}, "'priority' must be a whole number from 1 to 9"),
        ({"priority": 10}, "'priority' must be a whole number from 1 to 9"),
        ({"sub_type": "gpu"}, "'sub_type' must be one of qc, icf, features; got 'gpu'"),
        ({"sub_type": "QC"}, "'sub_type' must be one of qc, icf, features; got 'QC'"),
        (
            {"cp_version": "5.0 beta"},
            "'cp_version' must be at most 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit (a Kubernetes label); got '5.0 beta'",
        ),
        ({"cp_version": "x" * 64}, "(a Kubernetes label)"),
        ({"cp_version": "-5.0"}, "(a Kubernetes label)"),
        ({"cp_version": "5.0."}, "(a Kubernetes label)"),
        ({"cp_version": ["5"]}, "(a Kubernetes label)"),
        ({"type": "shell"}, "sub-analysis type 'shell' is not supported (only 'cellprofiler')"),
    ],
)
def test_meta_out_of_range_is_refused_naming_the_key_and_the_allowed_values(meta, message):
    with pytest.raises(PlanningError) as refused:
        options(**meta)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    "meta, parsed",
    [
        ({"job_timeout": 1}, ("job_timeout", 1)),
        ({"job_timeout": 7 * 24 * 3600}, ("job_timeout", 604800)),
        ({"job_timeout": None}, ("job_timeout", 10800)),
        ({"job_timeout": "600"}, ("job_timeout", 600)),
        ({"batch_size": -1}, ("batch_size", -1)),  # <= 0: one batch of all image sets
        ({"batch_size": None}, ("batch_size", 0)),
        ({"priority": 1}, ("priority", 1)),
        ({"priority": "9"}, ("priority", 9)),
        ({"sub_type": "icf"}, ("sub_type", "icf")),
        ({"cp_version": "5.0.0.dev784"}, ("cp_version", "5.0.0.dev784")),
        ({"cp_version": "x" * 63}, ("cp_version", "x" * 63)),
        ({"pipeline_file": "jump/analysis.cppipe"}, ("pipeline_file", "jump/analysis.cppipe")),
    ],
)
def test_meta_at_the_edges_of_its_ranges_is_accepted(meta, parsed):
    key, value = parsed
    assert getattr(options(**meta), key) == value


# --- LoadData CSV -----------------------------------------------------------------


def one_batch(*paths, well="B02", site=3, z=1, timepoint=2):
    return Batch(0, (ImageSet(timepoint, well, site, z, tuple(paths)),))


def rows_of(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_loaddata_header_and_metadata():
    batch = one_batch("/nas/p/B02_c1.tiff", "/nas/p/B02_c3.tiff")
    text = loaddata_csv(batch, ("HOECHST", "MITO"), plate_barcode="PB001", plate_acquisition_id=17)
    header = next(csv.reader(io.StringIO(text)))
    assert header == [
        "FileName_HOECHST",
        "PathName_HOECHST",
        "URL_HOECHST",
        "FileName_MITO",
        "PathName_MITO",
        "URL_MITO",
        "Metadata_Barcode",
        "Metadata_Well",
        "Metadata_Site",
        "Metadata_AcqID",
        "Metadata_z",
        "Metadata_Timepoint",
        "Metadata_Plate",
        "Metadata_Row",
        "Metadata_Col",
    ]
    [row] = rows_of(text)
    assert (row["FileName_MITO"], row["PathName_MITO"]) == ("B02_c3.tiff", "/nas/p")
    assert [row[k] for k in header[6:]] == ["PB001", "B02", "3", "17", "1", "2", "PB001", "2", "2"]


@pytest.mark.parametrize("path", ["/nas/plate 1/B02 s1#c1.tiff", "/nas/p/B02_s1_w1.tiff", "/nas/ü/100%.tif"])
def test_loaddata_url_is_a_file_url_of_the_absolute_path(path):
    [row] = rows_of(loaddata_csv(one_batch(path), ("HOECHST",), plate_barcode="PB", plate_acquisition_id=1))
    url = urlparse(row["URL_HOECHST"])
    assert url.scheme == "file" and url.netloc == ""
    assert unquote(url.path) == path
    assert str(PurePosixPath(row["PathName_HOECHST"]) / row["FileName_HOECHST"]) == path


def test_loaddata_icf_columns_point_at_the_icf_files():
    text = loaddata_csv(
        one_batch("/nas/p/a.tiff", "/nas/p/b.tiff"),
        ("HOECHST", "MITO"),
        plate_barcode="PB",
        plate_acquisition_id=1,
        icf_folder="/nas/results/PB/1/9",
    )
    header = next(csv.reader(io.StringIO(text)))
    assert header[15:] == [
        "FileName_ICF_HOECHST",
        "PathName_ICF_HOECHST",
        "URL_ICF_HOECHST",
        "FileName_ICF_MITO",
        "PathName_ICF_MITO",
        "URL_ICF_MITO",
    ]
    [row] = rows_of(text)
    assert row["FileName_ICF_MITO"] == "ICF_MITO.npy"
    assert row["PathName_ICF_MITO"] == "/nas/results/PB/1/9"
    assert unquote(urlparse(row["URL_ICF_MITO"]).path) == "/nas/results/PB/1/9/ICF_MITO.npy"


def test_loaddata_without_icf_has_no_icf_columns():
    text = loaddata_csv(one_batch("/nas/a.tiff"), ("HOECHST",), plate_barcode="PB", plate_acquisition_id=1)
    assert "ICF" not in text


def test_loaddata_has_one_row_per_image_set_in_batch_order():
    p = plan(images(wells=("B02", "B03"), sites=(1, 2)), CHANNELS, options(batch_size=3))
    rows = rows_of(loaddata_csv(p.batches[0], p.dyes, plate_barcode="PB", plate_acquisition_id=1))
    assert [(r["Metadata_Well"], r["Metadata_Site"]) for r in rows] == [("B02", "1"), ("B02", "2"), ("B03", "1")]
    assert rows[2]["FileName_SYTO"] == "B03_s1_z0_c2.tiff"


@pytest.mark.parametrize("path, icf_folder", [("nas/p/a.tiff", None), ("/nas/p/a.tiff", "results/icf")])
def test_loaddata_relative_path_is_an_error(path, icf_folder):
    with pytest.raises(PlanningError, match="not absolute"):
        loaddata_csv(one_batch(path), ("HOECHST",), plate_barcode="PB", plate_acquisition_id=1, icf_folder=icf_folder)


# --- scale ------------------------------------------------------------------------


def test_a_full_384_well_plate_plans_every_image_set():
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    five = {1: "HOECHST", 2: "SYTO", 3: "MITO", 4: "PHAL", 5: "CONA"}
    ims = images(wells=wells, sites=range(1, 10), channels=five)
    assert len(ims) == 17_280
    p = plan(ims, five, options(batch_size=100))
    assert p.image_set_count == 3_456
    assert len(p.batches) == 35 and len(p.batches[-1].image_sets) == 56
    assert len(set(keys(p))) == 3_456
