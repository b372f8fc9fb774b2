"""Partitions a person reads: plate x pipeline.

Every analysis asset is partitioned by two dynamic dimensions, `pipeline` (the imagedb
analysis pipeline's name) and `plate` (the plate acquisition: its barcode; a barcode
imaged more than once has `<barcode>~<acquisition id>` for every acquisition after the
first). Dagster orders the dimensions by name, so a key reads `demo_features|PLATE-0001`.
The sensor adds a key as soon as the acquisition or pipeline is registered in imagedb (at
most `CPP_SENSOR_MAX_NEW_KEYS` a tick: partition_growth.py), so the partition grid is
the lab's plate x pipeline overview. A partition may see several
analyses over time; the latest is its state, older ones stay in imagedb and in the run
history. A sub-analysis keeps its own exactly-once run key (`sub<id>`).

Also: the run tags that tie a run to its sub-analysis and re-run generation.
"""

from __future__ import annotations

import re

import dagster as dg

from cpp_dagster.ids import parse_id
from cpp_dagster.imagedb.rows import RunStamp

plate_partitions = dg.DynamicPartitionsDefinition(name="plate")
pipeline_partitions = dg.DynamicPartitionsDefinition(name="pipeline")
analysis_partitions = dg.MultiPartitionsDefinition({"pipeline": pipeline_partitions, "plate": plate_partitions})

# What Dagster cannot take in a dynamic or multi-dimensional key (`|` separates the
# dimensions, `,` breaks the UI's backfill dialog, `...` is a range), plus `~` (ours) and
# the path rule's own refusals.
_UNUSABLE = re.compile(r"[|,~/\\\x00-\x1f\x7f]|\.\.\.|^\s|\s$|^\.\.?$")
MAX_KEY_LENGTH = 200


def usable(name: str | None) -> bool:
    return bool(name) and len(name) <= MAX_KEY_LENGTH and not _UNUSABLE.search(name)


def plate_keys(barcodes: dict[int, str]) -> dict[int, str]:
    """Plate acquisition id -> its plate key: the barcode for a barcode's first
    acquisition, `<barcode>~<id>` for a later one, `~<id>` for a barcode no key can hold.
    Stable: a new acquisition has a higher id, so no key ever changes."""
    first: dict[str, int] = {}
    for acq_id in sorted(barcodes):
        first.setdefault(barcodes[acq_id], acq_id)
    keys = {}
    for acq_id, barcode in barcodes.items():
        if not usable(barcode):
            keys[acq_id] = f"~{acq_id}"
        else:
            keys[acq_id] = barcode if first[barcode] == acq_id else f"{barcode}~{acq_id}"
    return keys


def key_lookup(plate_key: str) -> tuple[str, int | None]:
    """(barcode, acquisition id) to look up for a plate key: a key that ends in `~<id>`
    names that acquisition; otherwise it is a barcode. Their acquisitions, given to
    `plate_keys`, include the one the key names, if any."""
    barcode, tilde, acq_id = plate_key.rpartition("~")
    if tilde and parse_id(acq_id) is not None:
        return barcode, parse_id(acq_id)
    return plate_key, None


def pipeline_key(pipeline_name: str | None, analysis_id: int) -> str:
    """The pipeline dimension's key: the pipeline's name, or `~an<id>` for an analysis
    with no usable pipeline name (one written into imagedb by hand)."""
    return pipeline_name if usable(pipeline_name) else f"~an{analysis_id}"


def partition_key(pipeline: str, plate: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"pipeline": pipeline, "plate": plate})


def split_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(pipeline key, plate key) of an analysis partition key."""
    if isinstance(key, dg.MultiPartitionKey):
        return key.keys_by_dimension["pipeline"], key.keys_by_dimension["plate"]
    pipeline, _, plate = key.partition("|")
    return pipeline, plate


# Run tags. `imagedb/sub_id`: the sub-analysis a sensor-launched run runs.
# `imagedb/analysis_id`: the analysis of the run (a UI run adds it once it submitted).
# `imagedb/generation`: the re-run generation a run belongs to (`store.rerun_generations`
# when the sensor requested it; a UI run adopts the current one); every outcome it
# writes to imagedb carries it.
SUB_ID_TAG = "imagedb/sub_id"
ANALYSIS_ID_TAG = "imagedb/analysis_id"
GENERATION_TAG = "imagedb/generation"
PROGRESS_TAG = "imagedb/progress"
PARTITION_TAG = "dagster/partition"
ACTIVE_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def tagged_sub_id(run: dg.DagsterRun | None) -> int | None:
    return parse_id(run.tags.get(SUB_ID_TAG)) if run is not None else None


def run_stamp(run: dg.DagsterRun | None) -> RunStamp:
    """The RunStamp of a run: its generation tag and its root run id (a re-execution
    from failure continues the run it re-executes)."""
    if run is None:
        return RunStamp()
    return RunStamp(parse_id(run.tags.get(GENERATION_TAG)), run.root_run_id or run.run_id)


def other_active_runs(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """Runs of the same partition (plate x pipeline) other than `run` (and the runs it
    re-executes) that are active now."""
    key = run.tags.get(PARTITION_TAG)
    if key is None:
        return []
    found = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: key}, statuses=ACTIVE_STATUSES))
    return [r.run_id for r in found if r.run_id != run.run_id]
