"""One partition per sub-analysis: `acq<plate acquisition>_an<analysis>_sub<sub-analysis>`,
and the run tags that tie a run to its sub-analysis's re-run generation."""
from __future__ import annotations

import re

import dagster as dg

from cpp_dagster.imagedb.rows import RunStamp

sub_analysis_partitions = dg.DynamicPartitionsDefinition(name="sub_analysis")

_KEY = re.compile(r"^acq(\d+)_an(\d+)_sub(\d+)$")


def partition_key(plate_acquisition_id: int, analysis_id: int, sub_id: int) -> str:
    return f"acq{plate_acquisition_id}_an{analysis_id}_sub{sub_id}"


def sub_id_of(key: str | None) -> int | None:
    """The sub-analysis of a partition key; None for a key that is not one of ours."""
    m = _KEY.match(key or "")
    return int(m.group(3)) if m else None


# The re-run generation a run of a sub-analysis belongs to (`store.rerun_generations`
# when the sensor requested it; a run launched from the UI adopts the current one when
# it plans). Every outcome it writes to imagedb carries it.
GENERATION_TAG = "imagedb/generation"
PARTITION_TAG = "dagster/partition"
ACTIVE_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def run_stamp(run: dg.DagsterRun | None) -> RunStamp:
    """The RunStamp of a run: its generation tag and its root run id (a re-execution
    from failure continues the run it re-executes)."""
    if run is None:
        return RunStamp()
    generation = run.tags.get(GENERATION_TAG, "")
    return RunStamp(int(generation) if generation.isdigit() else None, run.root_run_id or run.run_id)


def other_active_runs(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """Runs of the same partition (sub-analysis) other than `run` that are active now."""
    key = run.tags.get(PARTITION_TAG)
    if key is None:
        return []
    found = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: key}, statuses=ACTIVE_STATUSES))
    return [r.run_id for r in found if r.run_id != run.run_id]
