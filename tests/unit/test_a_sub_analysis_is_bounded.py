"""One sub-analysis is bounded: a `z` naming a trillion planes is parsed as ranges (no
memory), and z planes, image sets and batches beyond the caps (CPP_MAX_Z_PLANES,
CPP_MAX_IMAGE_SETS, CPP_MAX_BATCHES) are a PlanningError naming the cap, raised while the
image rows stream in, before any batch exists. Through imagedb and the job (the error
in imagedb, LoadData size, streaming): tests/integration/test_caps_fail_in_imagedb_before_any_batch.py."""

from __future__ import annotations

import resource
import time

import pytest

from cpp_dagster.analysis.planning import PlanLimits, PlanningError, SubAnalysisOptions, parse_z_spec, plan
from cpp_dagster.imagedb.rows import Image

CHANNELS = {1: "DNA", 2: "RNA"}


def options(**meta) -> SubAnalysisOptions:
    return SubAnalysisOptions.from_meta({"pipeline_file": "x.cppipe", **meta})


def images(wells: int, sites: int = 1, zs=(0,)):
    """A stream of image rows (a generator, as imagedb's server-side cursor gives them)."""
    for w in range(wells):
        for s in range(1, sites + 1):
            for z in zs:
                for c in CHANNELS:
                    yield Image(f"W{w:05d}", s, c, f"/nas/images/W{w}_s{s}_z{z}_c{c}.tif", z)


@pytest.mark.parametrize("spec", ["0-999999999999", "0-10000000", "0-500,400-1000,1001"])
def test_a_huge_z_range_is_refused_without_materialising_it(spec):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    opts = options(z=spec)  # the sensor's check: syntax only, in constant memory
    with pytest.raises(
        PlanningError, match=r"names [\d,]+ planes; a sub-analysis may name at most 1,000 \(CPP_MAX_Z_PLANES\)"
    ):
        plan(images(2), CHANNELS, opts)
    assert time.monotonic() - started < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: no list of planes


def test_overlapping_ranges_count_once_and_a_range_within_the_cap_plans():
    assert parse_z_spec("0-500,400-999").count == 1000
    assert len(plan(images(2, zs=range(3)), CHANNELS, options(z="0-999")).batches) == 1


@pytest.mark.parametrize("spec", ["9" * 13, "1-" + "9" * 5000, ",".join(["1"] * 2000)])
def test_a_z_spec_with_absurd_numbers_or_length_is_a_readable_error(spec):
    with pytest.raises(PlanningError, match="bad z specification"):
        parse_z_spec(spec)


def test_too_many_image_sets_are_refused_while_the_rows_stream_in():
    read = 0

    def counted():
        nonlocal read
        for im in images(10_000):
            read += 1
            yield im

    with pytest.raises(PlanningError, match=r"at most 100 image sets are planned \(CPP_MAX_IMAGE_SETS\)"):
        plan(counted(), CHANNELS, options(z="0"), PlanLimits(max_image_sets=100))
    assert read < 250  # stopped at the cap, not after reading the whole plate


def test_too_many_batches_are_refused_before_any_batch_exists():
    with pytest.raises(PlanningError, match=r"batch_size 1 makes 300 batches .* at most 200 \(CPP_MAX_BATCHES\)"):
        plan(images(300), CHANNELS, options(batch_size=1), PlanLimits(max_batches=200))
    assert len(plan(images(300), CHANNELS, options(batch_size=2), PlanLimits(max_batches=200)).batches) == 150
