"""Registering a pipeline (`cpp-dagster pipeline add`) and checking pipeline files
(`cpp-dagster pipeline check`) before any plate is planned.

`add_pipeline` reads each step's file once, has CellProfiler inspect those very bytes
(`pipeline_check.inspect`, the cache planning uses, so planning a plate with the version
does not inspect it again) and compares what each step needs with the plan's inputs the
way planning does (`pipeline_check.problems`): a step others depend on may save files
only, with `use_icf` the illumination images count. The dyes are the channel map's
(`--channel-map`, narrowed to the step's `channels` as planning narrows it), else the
step's `channels`; with neither, the images are not compared (the needs are listed).
Only when every step passes are the files put into the content-addressed store
(`pipeline_store`) and the version registered (`ImageDB.add_pipeline_version`): a refused
pipeline registers nothing and leaves nothing in the store.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpp_dagster.analysis import cellprofiler, loaddata, pipeline_check, planning
from cpp_dagster.analysis.pipeline_check import PipelineCheckError, PipelineNeeds
from cpp_dagster.analysis.pipeline_steps import (
    PLACEHOLDER_PLATE,
    PipelineStepError,
    description,
    needs_summary,
    pipeline_meta,
    pipeline_name,
    step_label,
    step_options,
    sub_analyses,
)
from cpp_dagster.analysis.pipeline_store import PipelineFile, read_pipeline_file, store_pipeline_file
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.settings import Settings


@dataclass(frozen=True)
class StepSpec:
    """One step as given: its file and its `KEY=VALUE` options."""

    file: str
    options: Sequence[str] = ()


@dataclass(frozen=True)
class FileCheck:
    """What one pipeline file needs (`pipeline_steps.needs_summary`) and why it cannot run
    (empty: it can); `compared` says what its images were compared with (None: nothing)."""

    source: str
    sha256: str
    needs: dict[str, Any]
    problems: list[str]
    compared: str | None


@dataclass(frozen=True)
class AddedPipeline:
    name: str
    version: int
    created: bool  # False: the latest version already had this content
    steps: list[dict[str, Any]]  # what the version records per step
    written: list[str] = field(default_factory=list)  # store files written now (not there before)


def _inspect(settings: Settings, pipeline: PipelineFile, executable: str) -> PipelineNeeds:
    """CellProfiler's inspection of exactly these bytes (a private copy, so the file the
    scientist named may change meanwhile without effect)."""
    with tempfile.TemporaryDirectory(prefix="cpp-pipeline-check-") as tmp:
        copy = Path(tmp) / f"{pipeline.sha256}.cppipe"
        copy.write_bytes(pipeline.data)
        return pipeline_check.inspect(copy, cellprofiler=executable, cache_dir=settings.pipeline_check_cache)


def dyes_of(channel_map: dict[int, str] | None, options: planning.SubAnalysisOptions) -> tuple[str, ...] | None:
    """The dyes a step's LoadData would provide: the channel map's, narrowed to the step's
    `channels` (as planning narrows them); without a map, the step's `channels`."""
    if channel_map is not None:
        return tuple(planning.select_dyes(channel_map, options.channels).values())
    return options.channels


def check_step(
    settings: Settings,
    pipeline: PipelineFile,
    options: planning.SubAnalysisOptions,
    *,
    dyes: Sequence[str] | None,
    feeds_others: bool,
) -> tuple[PipelineNeeds, list[str]]:
    """What the step's file needs, and every reason it cannot run as planning would say it.
    The executable is the step's `cp_version`'s (CellProfilerError when it is not installed)."""
    executable = cellprofiler.executable_of(settings, options.cp_version)
    needs = _inspect(settings, pipeline, executable)
    illumination = loaddata.illumination_images(dyes or (), options.icf_naming, PLACEHOLDER_PLATE) if dyes else {}
    found = pipeline_check.problems(
        needs,
        pipeline_file=pipeline.source,
        dyes=dyes,
        illumination_images=set(illumination),
        use_icf=options.use_icf,
        files_only_allowed=feeds_others,
    )
    return needs, found


def _channel_map(db: ImageDB | None, channel_map_id: int | None) -> dict[int, str] | None:
    if channel_map_id is None:
        return None
    if not 0 <= channel_map_id < 2**31:  # imagedb's map_id is an integer column
        raise PipelineStepError(f"channel map {channel_map_id} cannot exist: a channel map id is 0 to {2**31 - 1}")
    found = db.channel_map(channel_map_id)
    if not found:
        raise PipelineStepError(f"imagedb has no channel map {channel_map_id} (table channel_map)")
    return found


def _compared(channel_map_id: int | None, dyes: Sequence[str] | None) -> str | None:
    if dyes is None:
        return None
    return f"channel map {channel_map_id}: {', '.join(dyes)}" if channel_map_id is not None else ", ".join(dyes)


def add_pipeline(
    db: ImageDB,
    settings: Settings,
    name: str,
    steps: Sequence[StepSpec],
    *,
    description_text: str | None = None,
    channel_map_id: int | None = None,
    added_by: str | None = None,
) -> AddedPipeline:
    """Check every step, then store its files and register the version (see the module).
    PipelineStepError, pipeline_store.PipelineFileError, PipelineCheckError (every step's
    problems, each named by its step) or cellprofiler.CellProfilerError otherwise."""
    name = pipeline_name(name)
    text = description(description_text)
    if added_by is not None and len(added_by) > 100:
        raise PipelineStepError("--added-by is longer than 100 characters")
    count = len(steps)
    files = [read_pipeline_file(step.file) for step in steps]
    options = [
        step_options(step.options, step_label(i, count, f.source)) for i, (step, f) in enumerate(zip(steps, files))
    ]
    subs = sub_analyses([(f.source, f.store_name, o) for f, o in zip(files, options)])
    channel_map = _channel_map(db, channel_map_id)
    recorded, problems = [], []
    for index, (pipeline, sub) in enumerate(zip(files, subs)):
        parsed = planning.SubAnalysisOptions.from_meta(sub)
        dyes = dyes_of(channel_map, parsed)
        needs, found = check_step(settings, pipeline, parsed, dyes=dyes, feeds_others=index < count - 1)
        prefix = f"{step_label(index, count, pipeline.source)}: " if count > 1 else ""
        problems += [prefix + problem for problem in found]
        recorded.append(
            {
                "source": pipeline.source,
                "sha256": pipeline.sha256,
                "pipeline_file": pipeline.store_name,
                "sub_type": sub["sub_type"],
                "needs": needs_summary(needs, parsed),
                "compared_with": _compared(channel_map_id, dyes),
            }
        )
    if problems:
        raise PipelineCheckError(
            problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + " | ".join(problems)
        )
    written = []
    for pipeline in files:
        path, new = store_pipeline_file(settings.pipelines_dir, pipeline)
        if new:
            written.append(str(path))
    added = db.add_pipeline_version(name, pipeline_meta(subs, text), recorded, added_by)
    return AddedPipeline(name, added.version, added.created, recorded, written)


def check_file(
    db: ImageDB | None,
    settings: Settings,
    path: str,
    option_pairs: Sequence[str] = (),
    *,
    channel_map_id: int | None = None,
    feeds_others: bool = False,
) -> FileCheck:
    """`cpp-dagster pipeline check`: one file with the step options `option_pairs`,
    compared with the channel map when one is given (`db` is needed only then)."""
    pipeline = read_pipeline_file(path)
    where = step_label(0, 1, pipeline.source)
    meta = {"type": "cellprofiler", **step_options(option_pairs, where), "pipeline_file": pipeline.store_name}
    try:
        parsed = planning.SubAnalysisOptions.from_meta(meta)
    except planning.PlanningError as e:
        raise PipelineStepError(f"{where}: {e}") from None
    dyes = dyes_of(_channel_map(db, channel_map_id), parsed)
    needs, found = check_step(settings, pipeline, parsed, dyes=dyes, feeds_others=feeds_others)
    return FileCheck(
        pipeline.source, pipeline.sha256, needs_summary(needs, parsed), found, _compared(channel_map_id, dyes)
    )
