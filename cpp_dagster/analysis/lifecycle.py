"""What happens to one sub-analysis, step by step: prepare (plan and write LoadData CSVs),
run one batch, merge, derive the single-cell table and well profiles, complete (record
the outcome). The Dagster ops in `defs/` are
thin wrappers around these functions, so the CLI and tests use the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from cpp_dagster import paths
from cpp_dagster.analysis import cellprofiler, loaddata, pipeline_check, planning, quality
from cpp_dagster.analysis.sub_analysis import SubAnalysisRun
from cpp_dagster.features import batch_tables, profiles, provenance, results_folder, single_cell
from cpp_dagster.features.checks import CheckOutcome
from cpp_dagster.features.merge import MergeResult
from cpp_dagster.features.profiles import ProfilesResult
from cpp_dagster.features.single_cell import SingleCellResult
from cpp_dagster.imagedb.outcome import StaleRunError, stale_message
from cpp_dagster.imagedb.rows import RunStamp
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.settings import Settings

IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
SINGLE_CELL_FILE = "single_cell.parquet"
PROFILES_FILE = "well_profiles.parquet"


@dataclass(frozen=True)
class BatchSpec:
    """Everything a batch step needs; small, pickled between steps."""

    sub_id: int
    name: str
    index: int
    batch_dir: str
    pipeline: str
    image_sets: int
    job_timeout: int
    cp_version: str | None
    sub_type: str | None
    priority: int | None
    stamp: RunStamp = RunStamp()  # the run that planned it (generation, run id)
    cellprofiler: str = ""  # the executable of its cp_version (`cellprofiler.executable_of`); "": CPP_CELLPROFILER


@dataclass(frozen=True)
class Prepared:
    sub: SubAnalysisRun  # resolved once; the later steps get it from here
    batches: list[BatchSpec]

    @property
    def image_sets(self) -> int:
        return sum(b.image_sets for b in self.batches)

    @property
    def stamp(self) -> RunStamp:
        return self.sub.stamp


@dataclass(frozen=True)
class Merged:
    sub: SubAnalysisRun
    merge: MergeResult
    object_tables: tuple[str, ...]  # Nuclei, Cells, ...: none for a pipeline that exports only an Image table
    batches: tuple[str, ...]  # the planned batches merged (batch_NNNN)

    @property
    def tables_dir(self) -> Path:
        return self.sub.tables_dir


def prepare(db: ImageDB, settings: Settings, sub: SubAnalysisRun) -> Prepared:
    """Plan a resolved sub-analysis (`sub_analysis.resolve`), write one LoadData CSV per
    batch and mark it started by its run (`sub.stamp`). Raises planning.PlanningError or cellprofiler.CellProfilerError with
    a readable message for anything wrong with the analysis as submitted (including a
    pipeline that cannot run on this plan, `check_pipeline`, before any batch is
    written), StaleRunError for a run of an older generation."""
    sub_id, acq, options = sub.sub_id, sub.acquisition, sub.options
    pipeline = cellprofiler.resolve_pipeline_file(settings.pipelines_dir, options.pipeline_file)
    limits = settings.limits
    plan = planning.plan(
        db.stream_images(acq.id),
        db.channel_map(acq.channel_map_id),
        options,
        planning.PlanLimits(limits.max_z_planes, limits.max_image_sets, limits.max_batches),
    )
    planning.check_image_roots(plan, settings.image_folders)
    icf_folder = str(sub.results_dir) if options.use_icf else None
    if icf_folder is not None:
        icf_files = loaddata.illumination_images(plan.dyes, options.icf_naming, acq.plate_barcode).values()
        missing = [name for name in icf_files if not (sub.results_dir / name).is_file()]
        if missing:
            raise planning.PlanningError(
                f"use_icf is set but {', '.join(missing)} are not in {sub.results_dir} (icf_naming "
                f"{options.icf_naming.value!r}; did the illumination step run and name its files so?)"
            )
    # a cp_version that is not installed fails here, before any batch
    executable = cellprofiler.executable_of(settings, sub.options.cp_version)
    check_pipeline(settings, sub, pipeline, plan, executable)  # before any batch is written
    specs = []
    for batch in plan.batches:
        batch_dir = sub.work_dir / batch.name
        batch_dir.mkdir(parents=True, exist_ok=True)
        # every pod can write to the work area: a planted link would send the batch elsewhere
        for folder in (sub.work_dir.parent, sub.work_dir, batch_dir):
            paths.real_folder(folder, "work folder")
        text = loaddata.loaddata_csv(
            batch,
            plan.dyes,
            plate_barcode=acq.plate_barcode,
            plate_acquisition_id=acq.id,
            icf_folder=icf_folder,
            icf_naming=options.icf_naming,
        )
        if len(text) > limits.max_loaddata_mb * 1024 * 1024:  # characters: at least as many bytes
            raise planning.PlanningError(
                f"the LoadData CSV of {batch.name} is {len(text) / 2**20:,.1f} MB; at most "
                f"{limits.max_loaddata_mb:g} MB (CPP_MAX_LOADDATA_MB): use a smaller batch_size"
            )
        _write_atomically(batch_dir / "loaddata.csv", text)
        specs.append(
            BatchSpec(
                sub_id,
                batch.name,
                batch.index,
                str(batch_dir),
                str(pipeline),
                len(batch.image_sets),
                options.job_timeout,
                options.cp_version,
                options.sub_type,
                options.priority,
                sub.stamp,
                executable,
            )
        )
    if not db.mark_sub_started(sub_id, batches=len(specs), image_sets=plan.image_set_count, stamp=sub.stamp):
        raise StaleRunError(stale_message(sub_id, sub.stamp))
    status = dataclasses.replace(sub.status, state="running", batches=len(specs), image_sets=plan.image_set_count)
    return Prepared(dataclasses.replace(sub, status=status), specs)


def check_pipeline(
    settings: Settings, sub: SubAnalysisRun, pipeline: Path, plan: planning.Plan, executable: str | None = None
) -> None:
    """Refuse (PipelineCheckError, with every reason) a pipeline that cannot run on this
    plan: a module CellProfiler cannot load, no Image table exported, images the
    channel map cannot provide, use_icf without an illumination image. CellProfiler
    inspects each pipeline file once (cached in `settings.pipeline_check_cache`)."""
    options = sub.options
    needs = pipeline_check.inspect(
        pipeline, cellprofiler=executable or settings.cellprofiler, cache_dir=settings.pipeline_check_cache
    )
    pipeline_check.check(
        needs,
        pipeline_file=options.pipeline_file,
        dyes=plan.dyes,
        illumination_images=set(loaddata.illumination_images(plan.dyes, options.icf_naming, sub.plate_barcode)),
        use_icf=options.use_icf,
        files_only_allowed=sub.feeds_others,
    )


def run_batch(
    settings: Settings,
    spec: BatchSpec,
    echo: Callable[[str], None] | None = None,
    abandoned: Callable[[], bool] | None = None,
):
    """Run CellProfiler on one batch, unless a previous run of this sub-analysis already
    finished this very batch (same LoadData CSV, pipeline and CellProfiler), in this
    generation's folder or an earlier one's: a re-run then reuses its verified outputs
    (hard links into its own folder), so only failed batches run again. The verified
    outputs are converted here (Arrow IPC), in the batch's own process or pod
    (`batch_tables`), before the batch counts as done; a reused batch reuses its conversion."""
    batch_dir = Path(spec.batch_dir)
    marker, fingerprint = batch_dir / "done.json", batch_fingerprint(settings, spec)
    done = _finished(batch_dir, fingerprint)
    if done is not None:
        return cellprofiler.BatchOutcome(**{**done["outcome"], "reused": True})
    marker.unlink(missing_ok=True)
    for earlier in sorted(batch_dir.parent.parent.glob(f"g*/{batch_dir.name}")):
        done = _finished(earlier, fingerprint) if earlier != batch_dir else None
        if done is not None:
            return _reuse(earlier, batch_dir, done, fingerprint)
    outcome = cellprofiler.run_batch(
        cellprofiler=spec.cellprofiler or settings.cellprofiler,
        pipeline=Path(spec.pipeline),
        batch_dir=batch_dir,
        expected_image_sets=spec.image_sets,
        timeout_s=spec.job_timeout,
        echo=echo,
        abandoned=abandoned,
    )
    batch_tables.convert_batch(batch_dir)
    _write_atomically(marker, json.dumps({"fingerprint": fingerprint, "outcome": dataclasses.asdict(outcome)}))
    return outcome


def _finished(batch_dir: Path, fingerprint: str) -> dict | None:
    """The done marker of a batch folder whose verified outputs match `fingerprint`."""
    marker = batch_dir / "done.json"
    if not (marker.is_file() and (batch_dir / "output").is_dir()):
        return None
    done = json.loads(marker.read_text())
    return done if done.get("fingerprint") == fingerprint else None


def _reuse(earlier: Path, batch_dir: Path, done: dict, fingerprint: str) -> cellprofiler.BatchOutcome:
    """An earlier generation's outputs of the same batch, linked into this batch's folder
    (staged in `output.partial` and renamed, as CellProfiler's own outputs are)."""
    staging = batch_dir / "output.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(earlier / "output", staging, copy_function=results_folder.link_or_copy)
    shutil.rmtree(batch_dir / "output", ignore_errors=True)
    staging.rename(batch_dir / "output")
    shutil.copyfile(earlier / "cellprofiler.log", batch_dir / "cellprofiler.log")
    if batch_tables.reuse_converted(earlier, batch_dir) is None:
        batch_tables.convert_batch(batch_dir)
    outcome = {
        **done["outcome"],
        "output_dir": str(batch_dir / "output"),
        "log_path": str(batch_dir / "cellprofiler.log"),
    }
    _write_atomically(batch_dir / "done.json", json.dumps({"fingerprint": fingerprint, "outcome": outcome}))
    return cellprofiler.BatchOutcome(**{**outcome, "reused": True})


def batch_fingerprint(settings: Settings, spec: BatchSpec) -> str:
    digest = hashlib.sha256()
    for part in (Path(spec.batch_dir) / "loaddata.csv", Path(spec.pipeline)):
        digest.update(part.read_bytes())
    executable = spec.cellprofiler or settings.cellprofiler
    # the version it reports too: a CellProfiler reinstalled under the same path never reuses
    digest.update(f"{executable}\0{cellprofiler.version(executable, settings.pipeline_check_cache)}".encode())
    return digest.hexdigest()


def merge(
    db: ImageDB,
    settings: Settings,
    sub: SubAnalysisRun,
    batch_dirs: Sequence[str],
    *,
    runs: Sequence[dict] = (),
    retries: dict[str, int] | None = None,
    image: str | None = None,
) -> Merged:
    """Merge the batches' outputs into the results folder (the tables into
    `sub.tables_dir`, concatenated from each batch's converted tables: `batch_tables`);
    the files become outputs of the sub-analysis (it finishes once the
    derived tables are written too). The folder is the analysis's: each sub-analysis's
    merge lists its files in a manifest of its own, so the features step's merge leaves
    the illumination step's ICF files alone. The folder switches as a whole, and only
    while `sub.stamp` is the sub-analysis's current run (StaleRunError otherwise: nothing
    changes); this sub-analysis's derived tables from before do not survive it. Its
    provenance (`features.provenance`) switches with the tables: `runs` (the Dagster runs,
    from the defs layer), `retries` per batch and the pod's `image` go into it."""
    out_dir, tables_dir = sub.results_dir, sub.tables_dir
    executable = cellprofiler.executable_of(settings, sub.options.cp_version)  # what the batches ran (`prepare`)
    record = provenance.Provenance(
        sub_id=sub.sub_id,
        meta=planned_meta(sub),
        pipeline=cellprofiler.resolve_pipeline_file(settings.pipelines_dir, sub.options.pipeline_file),
        batch_dirs=[Path(d) for d in batch_dirs],
        cellprofiler={
            "executable": executable,
            "version": cellprofiler.version(executable, settings.pipeline_check_cache),
        },
        runs=runs,
        retries=retries,
        image=image,
    )
    derived = [str((tables_dir / name).relative_to(out_dir)) for name in (SINGLE_CELL_FILE, PROFILES_FILE)]
    merged = batch_tables.merge_converted(
        [Path(d) for d in batch_dirs],
        out_dir,
        manifest=f".merged-files.sub{sub.sub_id}.json",
        tables_dir=tables_dir,
        replaces=derived,
        owner=f"sub{sub.sub_id}",
        guard=lambda: db.while_current(sub.sub_id, sub.stamp),
        provenance=record,
    )
    db.add_outputs(sub.sub_id, file_list(merged.files, settings.nas_root), sub.stamp)
    objects = tuple(
        sorted(
            t.name
            for t in merged.tables.values()
            if t.path.is_file() and "ObjectNumber" in pq.read_schema(t.path).names
        )
    )
    return Merged(sub, merged, objects, tuple(Path(d).name for d in batch_dirs))


def planned_meta(sub: SubAnalysisRun) -> dict:
    """The sub-analysis and its analysis as planned, for its provenance."""
    return {
        "sub_analysis": sub.sub_id,
        "analysis": sub.analysis_id,
        "pipeline": sub.pipeline_name,
        "plate_barcode": sub.plate_barcode,
        "plate_acquisition": sub.acquisition.id,
        "depends_on": list(sub.depends_on),
        "generation": sub.stamp.generation,
        "image_sets": sub.status.image_sets,
        "batches": sub.status.batches,
        **dataclasses.asdict(sub.options),
    }


def write_single_cell(db: ImageDB, settings: Settings, merged: Merged) -> SingleCellResult | None:
    """The joined single-cell table (pycytominer layout) from the merged tables; None
    (nothing written) when the merge wrote no object tables."""
    if not merged.object_tables:
        return None
    out_dir, objects = merged.tables_dir, list(merged.object_tables)
    return _publish_derived(
        db,
        settings,
        merged.sub,
        out_dir / SINGLE_CELL_FILE,
        lambda dest: single_cell.write_single_cell(out_dir, dest, objects=objects),
    )


def write_well_profiles(db: ImageDB, settings: Settings, merged: Merged) -> ProfilesResult | None:
    """Per-well median profiles from the single-cell table; None (nothing written) when
    the merge wrote no object tables."""
    if not merged.object_tables:
        return None
    out_dir = merged.tables_dir
    return _publish_derived(
        db,
        settings,
        merged.sub,
        out_dir / PROFILES_FILE,
        lambda dest: profiles.write_well_profiles(out_dir / SINGLE_CELL_FILE, dest),
    )


def _publish_derived(db: ImageDB, settings: Settings, sub: SubAnalysisRun, final: Path, write):
    """Write a derived table beside the merged tables it comes from (in the version of
    the results folder they are in), then move it into place while `sub.stamp` is the
    current run and that version is still the folder's: a stale run's table never lands
    in a newer run's results."""
    version = results_folder.current_version(final.parent)  # never through a planted link
    if version is None:
        raise FileNotFoundError(f"the results folder {final.parent} has no merged tables to derive {final.name} from")
    partial = version / f".{final.name}.{uuid.uuid4().hex}.partial"
    try:
        result = write(partial)
        with db.while_current(sub.sub_id, sub.stamp):
            if results_folder.current_version(final.parent) != version:
                raise StaleRunError(
                    f"the results folder of sub-analysis {sub.sub_id} was replaced while "
                    f"{final.name} was written from it; it was not published"
                )
            provenance.add_checksum(version, sub.sub_id, str(final.relative_to(sub.results_dir)), partial)
            os.replace(partial, version / final.name)
    finally:
        partial.unlink(missing_ok=True)
    db.add_outputs(sub.sub_id, file_list([final], settings.nas_root), sub.stamp)
    return dataclasses.replace(result, path=final)


def complete(
    db: ImageDB, settings: Settings, sub: SubAnalysisRun, found: dict[str, CheckOutcome] | None = None
) -> dict:
    """Record success: `finish` and `result = {"job_folder", "file_list"}` with every
    output the steps recorded, and the quality checks `found` (the features step's) in
    its status; under `quality: block` a failed ERROR check fails it instead, before it
    is marked finished (quality.QualityBlocked, naming the check). StaleRunError for a
    stale run (nothing recorded)."""
    entries = None if found is None else quality.status_entries(found)
    blocked = None if found is None else quality.blocking_message(found, sub.options.quality)
    if blocked is not None:
        db.mark_sub_failed(sub.sub_id, blocked, sub.stamp, checks=entries)
        raise quality.QualityBlocked(blocked)
    folder = str(sub.results_dir.relative_to(settings.nas_root))
    result = db.finish_with_outputs(sub.sub_id, folder, sub.stamp, checks=entries)
    if result is None:
        raise StaleRunError(stale_message(sub.sub_id, sub.stamp))
    return result


def file_list(files: Sequence[Path], nas_root: Path) -> list[str]:
    """Paths relative to the NAS root, image files collapsed to their folder."""
    entries = set()
    for f in files:
        rel = Path(f).relative_to(nas_root)
        entries.add(str(rel.parent) + "/" if rel.suffix.lower() in IMAGE_SUFFIXES else str(rel))
    return sorted(entries)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
