"""Step-level outcome in imagedb: a failed step (after its retries) fails the sub-analysis.

Hooks run inside the step's process; what they cannot see (a killed worker, a cancelled
run, a run that never started) is covered by the run-status sensors in sensors.py.
Each write carries the run's RunStamp: a failure of a stale run (an older re-run
generation, or another run than the one that started the sub-analysis) is refused by
imagedb, and one while another run of the same sub-analysis is active is not recorded
(that run decides the outcome).
"""

import dagster as dg

from cpp_dagster.defs.partitions import other_active_runs, run_stamp, sub_id_of


def failure_message(step_key: str, error: object) -> str:
    return f"step {step_key} failed: {error}"


@dg.failure_hook(required_resource_keys={"imagedb"})
def record_failure_in_imagedb(context: dg.HookContext) -> None:
    run = context.instance.get_run_by_id(context.run_id)
    sub_id = sub_id_of(run.tags.get("dagster/partition") if run else None)
    if sub_id is None:
        return
    error = context.op_exception
    message = failure_message(context.step_key, getattr(error, "description", None) or error)
    if other_active_runs(context.instance, run):
        context.log.warning(f"sub-analysis {sub_id} is being run by another run; this failure is not recorded")
    elif context.resources.imagedb.db().mark_sub_failed(sub_id, message, run_stamp(run)):
        context.log.error(f"sub-analysis {sub_id} marked failed in imagedb: {message}")
