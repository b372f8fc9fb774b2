"""The analysis pipelines in the UI: the `imagedb/analysis_pipelines` asset, observed by a sensor.

Its latest observation's metadata is a markdown table of every pipeline's current
version and what each of its steps needs (`cpp-dagster pipeline list` prints the same),
plus how many pipelines and versions there are. Registering stays in the CLI
(`cpp-dagster pipeline add`): the sensor only reads imagedb, and records a new
observation only when the table changed.
"""

import dagster as dg

from cpp_dagster.analysis.pipeline_listing import markdown_table
from cpp_dagster.defs.analysis.observations import observe_if_changed
from cpp_dagster.defs.resources import ImageDBResource
from cpp_dagster.imagedb.rows import ImageDBError

analysis_pipelines = dg.AssetSpec(
    ["imagedb", "analysis_pipelines"],
    kinds={"postgres"},
    group_name="imagedb",
    description="The analysis pipelines a plate can be analysed with: each one's current version, its steps "
    "and what each step needs (channels, illumination files). Open the latest observation's metadata; "
    "register a version with `cpp-dagster pipeline add`, see them all with `cpp-dagster pipeline show NAME`.",
)


def build_pipelines_sensor(interval_s: int) -> dg.SensorDefinition:
    return dg.sensor(
        name="analysis_pipelines_sensor",
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )(analysis_pipelines_sensor)


def analysis_pipelines_sensor(context: dg.SensorEvaluationContext, imagedb: ImageDBResource):
    """Observe `imagedb/analysis_pipelines` when the pipelines changed since the last observation."""
    try:
        pipelines = imagedb.db().registered_pipelines()
    except ImageDBError as e:  # imagedb without the versions table: say so, every tick
        return dg.SkipReason(str(e))
    table = markdown_table(pipelines)
    metadata = {
        "pipelines": dg.MetadataValue.md(table),
        "pipeline_count": len(pipelines),
        "version_count": sum(len(p.versions) for p in pipelines),
    }
    return observe_if_changed(
        context, analysis_pipelines.key, table, metadata, "the analysis pipelines have not changed"
    )
