"""The work area cleaned every night: `cpp-dagster gc` as a Dagster job on a schedule.

The job `clean_work_area` runs `work_area.collect` with the deployment's retention
(CPP_WORK_RETENTION_DAYS): finished sub-analyses' batch folders go once the retention
has run out; running, waiting and failed ones are kept (a failed one's batches are what
its re-run reuses; `cpp-dagster gc --expire-failed` removes those on demand). Each
sub-analysis's outcome is a line of the run's log; the totals are the step's metadata.
It also removes what runs leave past the retention (`work_leftovers.py`: compute logs
and IO-manager pickles of runs no longer active, unused pipeline-check cache entries,
training folders of versions not running); which runs are active is asked of Dagster.
The schedule is on by default; a lab that cleans by hand turns it off in the UI.
"""

import dagster as dg

from cpp_dagster.analysis import work_area, work_leftovers
from cpp_dagster.defs.resources import DeploymentResource, ImageDBResource

# every status of a run that has not ended: its logs, pickles and folders are in use
NOT_ENDED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def active_work(instance: dg.DagsterInstance) -> work_leftovers.ActiveWork:
    """The runs that have not ended, and the partition keys they run (a training run's key
    names its work folder)."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=NOT_ENDED))
    return work_leftovers.ActiveWork(
        run_ids=frozenset(r.run_id for r in runs),
        training_keys=frozenset(key for r in runs if (key := r.tags.get("dagster/partition")) is not None),
    )


CLEANING_CRON = "30 3 * * *"  # every night at 03:30 (the instance's time zone)


@dg.op(description="Frees the work folders of sub-analyses finished longer ago than CPP_WORK_RETENTION_DAYS")
def free_finished_work_folders(
    context: dg.OpExecutionContext, imagedb: ImageDBResource, deployment: DeploymentResource
) -> dg.Output[int]:
    settings = deployment.settings
    outcomes = work_area.collect(imagedb.db(), settings.work_root, settings.nas_root, settings.work_retention_days)
    for line in work_area.report_lines(outcomes, dry_run=False):
        context.log.info(line)
    leftovers = work_leftovers.collect_leftovers(
        settings.work_root, settings.pipeline_check_cache, settings.work_retention_days, active_work(context.instance)
    )
    for line in work_leftovers.report_lines(leftovers, dry_run=False):
        context.log.info(line)
    freed = [o for o in outcomes if o.freed]
    total = sum(o.bytes for o in freed)
    leftover_bytes = sum(o.bytes for o in leftovers if o.freed)
    return dg.Output(
        total + leftover_bytes,
        metadata={
            "freed_bytes": total + leftover_bytes,
            "freed": work_area.human_bytes(total + leftover_bytes),
            "freed_sub_analyses": dg.MetadataValue.json([o.sub_id for o in freed]),
            "kept_sub_analyses": len(outcomes) - len(freed),
            "freed_leftovers": sum(o.freed for o in leftovers),
            "kept_leftovers": sum(not o.freed for o in leftovers),
            "retention_days": settings.work_retention_days,
        },
    )


@dg.job(description="The work area's cleaning (what `cpp-dagster gc` does), every night by its schedule")
def clean_work_area():
    free_finished_work_folders()


clean_work_area_nightly = dg.ScheduleDefinition(
    name="clean_work_area_nightly",
    job=clean_work_area,
    cron_schedule=CLEANING_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Frees finished sub-analyses' work folders once CPP_WORK_RETENTION_DAYS has run out",
)
