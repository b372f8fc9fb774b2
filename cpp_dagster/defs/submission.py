"""Submitting analyses from the Dagster UI: the `submit_analyses` job, with typed config
("pipeline X on plate acquisitions A..Z", optional wells, sites, cp_version, priority).
It creates the same imagedb rows as `cpp-dagster submit` and the automation rules; the
pending_sub_analyses sensor then launches them."""

import dagster as dg
from pydantic import Field

from cpp_dagster.defs.resources import ImageDBResource


class SubmissionConfig(dg.Config):
    pipeline: str
    plate_acquisitions: list[int]
    wells: list[str] = []
    sites: list[int] = []
    cp_version: str | None = None
    priority: int | None = Field(None, description="1 (high) to 9 (low); anything else is refused")


def overrides(wells, sites, cp_version) -> dict:
    """The sub-analysis meta keys a submission may set (empty means: the pipeline's own)."""
    return {"well_filter": list(wells) or None, "site_filter": list(sites) or None, "cp_version": cp_version}


@dg.op
def submit_pipeline(context: dg.OpExecutionContext, config: SubmissionConfig, imagedb: ImageDBResource) -> None:
    db = imagedb.db()
    for acq in config.plate_acquisitions:
        submitted = db.submit_analysis(acq, config.pipeline, priority=config.priority,
                                       overrides=overrides(config.wells, config.sites, config.cp_version))
        context.log.info(f"submitted {config.pipeline} for plate acquisition {acq}: analysis "
                         f"{submitted.analysis_id}, sub-analyses {submitted.sub_ids}")


@dg.job(description="Submit an analysis pipeline for plate acquisitions (imagedb rows; the sensor launches them).")
def submit_analyses():
    submit_pipeline()
