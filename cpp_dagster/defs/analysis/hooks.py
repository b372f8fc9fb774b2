"""Step-level outcome in imagedb: a failed step (after its retries) fails its sub-analysis.

Hooks run inside the step's process; what they cannot see (a killed worker, a cancelled
run, a run that never started) is covered by the run-status sensors in sensors.py.
Each write carries the run's RunStamp: a failure of a stale run (an older re-run
generation, or another run than the one that started the sub-analysis) is refused by
imagedb, and one while another run of the same partition is active is not recorded
(that run decides the outcome).
"""

import dagster as dg

from cpp_dagster.defs.analysis.partitions import other_active_runs, run_stamp
from cpp_dagster.defs.analysis.run_target import stage_of_sub, sub_analyses_of_run
from cpp_dagster.defs.analysis.steps import stage_of_key


def failure_message(step_key: str, error: object) -> str:
    return f"step {step_key} failed: {error}"


@dg.failure_hook(required_resource_keys={"imagedb"})
def record_failure_in_imagedb(context: dg.HookContext) -> None:
    run = context.instance.get_run_by_id(context.run_id)
    if run is None:
        return
    db = context.resources.imagedb.db()
    stage = stage_of_key(context.step_key)
    subs = [s for s in sub_analyses_of_run(db, run) if stage is None or stage_of_sub(s) == stage]
    error = context.op_exception
    message = failure_message(context.step_key, getattr(error, "description", None) or error)
    for sub in subs:
        if sub.finish is not None or sub.error is not None:
            continue
        if other_active_runs(context.instance, run):
            context.log.warning(
                f"sub-analysis {sub.sub_id}: another run of this partition is active; this failure is not recorded"
            )
        elif db.mark_sub_failed(sub.sub_id, message, run_stamp(run)):
            context.log.error(f"sub-analysis {sub.sub_id} marked failed in imagedb: {message}")
