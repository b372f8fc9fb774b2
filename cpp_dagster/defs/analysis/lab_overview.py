"""The lab overview in the UI: the `imagedb/lab_overview` asset, observed by a sensor.

Its latest observation's metadata is bounded at any lab size: the count per state and
the lines of `cpp-dagster status` that need a person (failed, then waiting, with the
reason; here a launched run still in Dagster's run queue is named as such), at most
`ATTENTION_ROWS` of them, each cell cut, as a short markdown, and how many more there are
(`cpp-dagster status` prints them all). A lab member finds it from the asset graph
(group imagedb). imagedb stays the source of truth: the sensor only reads it, and
records a new observation only when that summary changed (a running step's progress
alone does not make one).
"""

import dagster as dg

from cpp_dagster.analysis.lab_overview import attention_markdown, attention_summary, overview_lines
from cpp_dagster.defs.analysis.observations import observe_if_changed
from cpp_dagster.defs.analysis.partitions import tagged_sub_id
from cpp_dagster.defs.resources import DeploymentResource, ImageDBResource

lab_overview = dg.AssetSpec(
    ["imagedb", "lab_overview"],
    kinds={"postgres"},
    group_name="imagedb",
    description="Every plate acquisition x pipeline at a glance: waiting (and why), running (progress), "
    "finished (result folder) or failed (why). The latest observation's metadata has the count per state and "
    "the lines that need attention (failed, waiting); `cpp-dagster status` prints every line.",
)


def build_overview_sensor(interval_s: int) -> dg.SensorDefinition:
    return dg.sensor(
        name="lab_overview_sensor", minimum_interval_seconds=interval_s, default_status=dg.DefaultSensorStatus.RUNNING
    )(lab_overview_sensor)


def queued_runs(instance: dg.DagsterInstance, limit: int = 5000) -> dict[int, str]:
    """Sub-analysis id -> its run that the sensor launched and that has not started:
    waiting in the run queue (or just created, about to be queued)."""
    waiting = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=waiting), limit=limit)
    return {sub_id: run.run_id for run in runs if (sub_id := tagged_sub_id(run)) is not None}


def lab_overview_sensor(context: dg.SensorEvaluationContext, imagedb: ImageDBResource, deployment: DeploymentResource):
    """Observe `imagedb/lab_overview` when the overview changed since the last observation."""
    settings = deployment.settings
    lines = overview_lines(
        imagedb.db().lab_overview(),
        url_template=settings.results_url_template,
        nas_root=settings.nas_root,
        queued=queued_runs(context.instance),
    )
    summary = attention_summary(lines)
    text = attention_markdown(summary)
    metadata = {
        "overview": dg.MetadataValue.md(text),
        **summary.counts,
        "attention_not_shown": summary.left_out,
    }
    return observe_if_changed(context, lab_overview.key, text, metadata, "the lab overview has not changed")
