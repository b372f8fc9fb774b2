"""The analysis workflow's Dagster wiring: plate x pipeline partitions, one asset per
pipeline step, the launch and outcome sensors, the lab overview, the analysis pipelines,
the lab's notifications, the work area's nightly cleaning. The work itself is in
cpp_dagster.analysis and below."""

from __future__ import annotations

import dagster as dg

from cpp_dagster.defs.analysis.assets import build_step_assets, plate_acquisitions
from cpp_dagster.defs.analysis.lab_overview import build_overview_sensor, lab_overview
from cpp_dagster.defs.analysis.notify import build_notify_sensor
from cpp_dagster.defs.analysis.pipelines import analysis_pipelines, build_pipelines_sensor
from cpp_dagster.defs.analysis.sensors import (
    STAGE_JOBS,
    Launching,
    analysis_job,
    build_automation_sensor,
    build_pending_sensor,
    record_run_cancellation,
    record_run_failure,
    record_run_without_outcome,
)
from cpp_dagster.defs.analysis.work_area import clean_work_area, clean_work_area_nightly


def analysis_defs(
    launching: Launching, batch_retry_policy: dg.RetryPolicy, *, overview_interval_s: int = 60
) -> dg.Definitions:
    return dg.Definitions(
        assets=[plate_acquisitions, lab_overview, analysis_pipelines, *build_step_assets(batch_retry_policy)],
        jobs=[analysis_job, *STAGE_JOBS.values(), clean_work_area],
        schedules=[clean_work_area_nightly],
        sensors=[
            build_pending_sensor(launching),
            build_automation_sensor(launching.interval_s),
            build_overview_sensor(overview_interval_s),
            build_pipelines_sensor(overview_interval_s),
            build_notify_sensor(launching.interval_s),
            record_run_failure,
            record_run_cancellation,
            record_run_without_outcome,
        ],
    )


__all__ = ["Launching", "analysis_defs"]
