"""Which sub-analysis a step of a run runs.

- A run the `pending_sub_analyses` sensor launched carries `imagedb/sub_id`: that one.
- A run launched from the UI (Materialize, or a backfill over plate x pipeline
  partitions) *is* a submission: its first step submits the pipeline for the partition's
  plate acquisition (the same rows as `cpp-dagster submit`, `RunClaims.submit_for_run`)
  and the run runs every step of it, in dependency order. A plate whose acquisition is
  not finished is submitted and waits: the step materializes nothing and the sensor
  launches the analysis once the acquisition finishes.
- With CPP_UI_RUNS=submit (the default on Kubernetes) a UI run only submits: the sensor
  launches each sub-analysis as its own run, with its own pod settings (its cp_version's
  image, its step's resources), which a run launched from the UI cannot carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from cpp_dagster.analysis.sub_analysis import Stage, SubAnalysisRun
from cpp_dagster.defs.analysis.partitions import (
    ANALYSIS_ID_TAG,
    GENERATION_TAG,
    key_lookup,
    plate_keys,
    split_key,
    tagged_sub_id,
)
from cpp_dagster.ids import parse_id
from cpp_dagster.imagedb.rows import SubAnalysis, SubAnalysisStatus
from cpp_dagster.imagedb.store import ImageDB


@dataclass(frozen=True)
class StepTarget:
    """What a step of this run does: run `sub_id`, or nothing (`reason` says why; `waits`:
    its plate acquisition is not finished, so the step's asset does not materialize,
    else it materializes saying why there was nothing to do)."""

    sub_id: int | None
    reason: str = ""
    waits: bool = False


def stage_of_sub(sub: SubAnalysis) -> Stage:
    meta = sub.meta if isinstance(sub.meta, dict) else {}
    sub_type = meta.get("sub_type")
    return Stage.of(sub_type if isinstance(sub_type, str) else None)


def target(context: dg.OpExecutionContext, db: ImageDB, stage: Stage, *, run_steps: bool = True) -> StepTarget:
    """The sub-analysis `step` runs in this run (see the module's docstring). `run_steps`
    False (CPP_UI_RUNS=submit): a UI run only submits, and runs nothing itself."""
    run = context.run
    sub_id = tagged_sub_id(run)
    if sub_id is not None:  # its kind of step is checked once it is resolved (check_stage)
        return StepTarget(sub_id)
    pipeline, plate = split_key(context.partition_key)
    keys = plate_keys(db.plate_acquisitions_like(*key_lookup(plate)))
    acq_id = next((a for a, key in keys.items() if key == plate), None)
    if acq_id is None:
        raise dg.Failure(f"no plate acquisition in imagedb has the plate key {plate!r}", allow_retries=False)
    if pipeline not in db.pipeline_names():
        raise dg.Failure(
            f"no analysis pipeline named {pipeline!r} in imagedb: a run from the UI submits a registered pipeline",
            allow_retries=False,
        )
    _check_selection(run, pipeline, [Stage.of(t) for t in db.pipeline_sub_types(pipeline)])
    root = run.root_run_id or run.run_id
    submission = db.submit_for_run(
        acq_id, pipeline, root, claim=first_of_each_stage if run_steps else lambda sub_types: set()
    )
    analysis_id = submission.analysis.analysis_id
    if ANALYSIS_ID_TAG not in run.tags:
        context.instance.add_run_tags(run.run_id, {ANALYSIS_ID_TAG: str(analysis_id), GENERATION_TAG: "0"})
    if not submission.acquisition_finished:
        return StepTarget(
            None,
            f"plate {plate}: acquisition not finished; analysis {analysis_id} is submitted and "
            "the sensor launches it once the acquisition has finished",
            waits=True,
        )
    if not submission.claimed:
        return StepTarget(
            None,
            f"plate {plate}: analysis {analysis_id} is submitted; the sensor launches each of "
            "its sub-analyses as a run of its own, with its pod settings (CPP_UI_RUNS=submit)",
            waits=True,
        )
    subs = [s for s in db.sub_analyses_of(analysis_id) if stage_of_sub(s) == stage]
    if not subs:
        return StepTarget(None, f"none: pipeline {pipeline!r} has no {stage.value} stage")
    return StepTarget(subs[0].sub_id)


def check_stage(sub: SubAnalysisRun, stage: Stage) -> None:
    """A run launched for a sub-analysis of another kind of step (a wrong job) fails
    before anything is planned."""
    if sub.stage != stage:
        raise dg.Failure(
            f"this run is for sub-analysis {sub.sub_id}, a {sub.stage.value} stage, not {stage.value}: "
            f"launch it with the {sub.stage.value}_job (as the sensor does)",
            allow_retries=False,
        )


def first_of_each_stage(sub_types) -> set[int]:
    """The sub-analyses a UI run runs itself: the first of each kind of step (a second
    step of the same kind is the same asset; the sensor launches it when its turn comes)."""
    first: dict[Stage, int] = {}
    for position, sub_type in enumerate(sub_types):
        first.setdefault(Stage.of(sub_type), position)
    return set(first.values())


def _check_selection(run: dg.DagsterRun, pipeline: str, steps: list[Stage]) -> None:
    """A UI run runs a whole pipeline: refuse (before submitting anything) a selection
    that leaves out one of its steps, which would then never run."""
    selected = {key.to_user_string() for key in (run.asset_selection or ())}
    missing = [s.value for s in dict.fromkeys(steps) if selected and s.value not in selected]
    if missing:
        raise dg.Failure(
            f"pipeline {pipeline!r} has the steps {', '.join(s.value for s in dict.fromkeys(steps))}: "
            f"select {', '.join(missing)} too (nothing was submitted)",
            allow_retries=False,
        )


def sub_analyses_of_run(db: ImageDB, run: dg.DagsterRun) -> list[SubAnalysis]:
    """The sub-analyses a run runs: the one it was launched for, or every one of the
    analysis a UI run submitted (and claimed)."""
    sub_id = tagged_sub_id(run)
    if sub_id is not None:
        return [db.sub_analysis(sub_id)]
    analysis = parse_id(run.tags.get(ANALYSIS_ID_TAG))
    if analysis is None:
        return []
    root = run.root_run_id or run.run_id
    runs_it = lambda status: root in (status.claimed_by_run, status.run_id)  # noqa: E731
    return [s for s in db.sub_analyses_of(analysis) if runs_it(SubAnalysisStatus.from_json(s.status))]
