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

from cpp_dagster import cellprofiler, paths, pipeline_check, planning
from cpp_dagster.config import Settings
from cpp_dagster.features import batch_tables, profiles, results_folder, single_cell
from cpp_dagster.features.merge import MergeResult
from cpp_dagster.features.profiles import ProfilesResult
from cpp_dagster.features.single_cell import SingleCellResult
from cpp_dagster.imagedb.rows import PlateAcquisition, RunStamp, SubAnalysis
from cpp_dagster.imagedb.store import ImageDB, StaleRunError, stale_message

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


@dataclass(frozen=True)
class Prepared:
    sub_analysis: SubAnalysis
    acquisition: PlateAcquisition
    results_dir: Path
    batches: list[BatchSpec]
    stamp: RunStamp  # the run that planned it, with its generation

    @property
    def image_sets(self) -> int:
        return sum(b.image_sets for b in self.batches)


@dataclass(frozen=True)
class Merged:
    tables_dir: Path  # where the sub-analysis's tables are (output_dirs)
    merge: MergeResult


def results_dir(settings: Settings, acquisition: PlateAcquisition, analysis_id: int) -> Path:
    """`results/<plate_barcode>/<plate_acquisition_id>/<analysis_id>/` under the NAS root.
    Each value from imagedb goes through the path rule (paths.UnsafePathError: a barcode
    `../x`, `/abs` or with a NUL byte never names a folder outside `results/`)."""
    plate = paths.under(settings.results_root, acquisition.plate_barcode, what="plate barcode")
    acq = paths.under(plate, acquisition.id, what="plate acquisition id")
    return paths.under(acq, analysis_id, what="analysis id")


def work_dir(settings: Settings, sub_id: int, generation: int = 0) -> Path:
    """`work/sub_<id>/g<generation>/`: each re-run generation plans into a folder of its
    own, so a cancelled or failed run's steps that are still running never write into
    the folders of the re-run that replaced it."""
    return paths.under(settings.work_root, f"sub_{sub_id}", f"g{generation}", what="work folder")


def prepare(db: ImageDB, settings: Settings, sub_id: int, stamp: RunStamp | None = None) -> Prepared:
    """Plan a sub-analysis, write one LoadData CSV per batch and mark it started by the
    run `stamp` (its generation: the current one when not given). Raises
    planning.PlanningError or cellprofiler.CellProfilerError with a readable message for
    anything wrong with the analysis as submitted (including a pipeline that cannot run on
    this plan, `check_pipeline`, before any batch is written), StaleRunError for a run of
    an older generation."""
    stamp = stamp or RunStamp()
    if stamp.generation is None:
        stamp = dataclasses.replace(stamp, generation=db.rerun_generations([sub_id]).get(sub_id, 0))
    sub = db.sub_analysis(sub_id)
    acq = db.plate_acquisition(sub.plate_acquisition_id)
    options = planning.SubAnalysisOptions.from_meta(sub.meta)
    pipeline = cellprofiler.resolve_pipeline_file(settings.pipelines_dir, options.pipeline_file)
    out_dir = results_dir(settings, acq, sub.analysis_id)  # before anything is written
    plan = planning.plan(db.images(acq.id), db.channel_map(acq.channel_map_id), options)
    icf_folder = str(out_dir) if options.use_icf else None
    if icf_folder is not None:
        icf_files = planning.illumination_images(plan.dyes, options.icf_naming, acq.plate_barcode).values()
        missing = [name for name in icf_files if not (out_dir / name).is_file()]
        if missing:
            raise planning.PlanningError(
                f"use_icf is set but {', '.join(missing)} are not in {out_dir} (icf_naming "
                f"{options.icf_naming.value!r}; did the illumination step run and name its files so?)"
            )
    check_pipeline(db, settings, sub, acq, options, pipeline, plan)  # before any batch is written
    specs = []
    for batch in plan.batches:
        batch_dir = work_dir(settings, sub_id, stamp.generation) / batch.name
        batch_dir.mkdir(parents=True, exist_ok=True)
        text = planning.loaddata_csv(batch, plan.dyes, plate_barcode=acq.plate_barcode,
                                     plate_acquisition_id=acq.id, icf_folder=icf_folder,
                                     icf_naming=options.icf_naming)
        _write_atomically(batch_dir / "loaddata.csv", text)
        specs.append(BatchSpec(sub_id, batch.name, batch.index, str(batch_dir), str(pipeline),
                               len(batch.image_sets), options.job_timeout, options.cp_version,
                               options.sub_type, options.priority, stamp))
    if not db.mark_sub_started(sub_id, batches=len(specs), image_sets=plan.image_set_count, stamp=stamp):
        raise StaleRunError(stale_message(sub_id, stamp))
    return Prepared(sub, acq, out_dir, specs, stamp)


def check_pipeline(db: ImageDB, settings: Settings, sub: SubAnalysis, acq: PlateAcquisition,
                   options: planning.SubAnalysisOptions, pipeline: Path, plan: planning.Plan) -> None:
    """Refuse (PipelineCheckError, with every reason) a pipeline that cannot run on this
    plan: a module CellProfiler cannot load, no Image table exported, images the
    channel map cannot provide, use_icf without an illumination image. CellProfiler
    inspects each pipeline file once (cached under the work root)."""
    needs = pipeline_check.inspect(pipeline, cellprofiler=settings.cellprofiler,
                                   cache_dir=settings.work_root / pipeline_check.CACHE_FOLDER)
    pipeline_check.check(needs, pipeline_file=options.pipeline_file, dyes=plan.dyes,
                         illumination_images=set(planning.illumination_images(
                             plan.dyes, options.icf_naming, acq.plate_barcode)), use_icf=options.use_icf,
                         files_only_allowed=others_depend_on(db, sub))


def others_depend_on(db: ImageDB, sub: SubAnalysis) -> bool:
    """Whether another sub-analysis of its analysis depends on `sub` (illumination, QC)."""
    return any(sub.sub_id in (s.depends_on_sub_id or []) for s in db.sub_analyses_of(sub.analysis_id))


def run_batch(settings: Settings, spec: BatchSpec, echo: Callable[[str], None] | None = None):
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
        cellprofiler=settings.cellprofiler,
        pipeline=Path(spec.pipeline),
        batch_dir=batch_dir,
        expected_image_sets=spec.image_sets,
        timeout_s=spec.job_timeout,
        echo=echo,
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
    outcome = {**done["outcome"], "output_dir": str(batch_dir / "output"),
               "log_path": str(batch_dir / "cellprofiler.log")}
    _write_atomically(batch_dir / "done.json", json.dumps({"fingerprint": fingerprint, "outcome": outcome}))
    return cellprofiler.BatchOutcome(**{**outcome, "reused": True})


def batch_fingerprint(settings: Settings, spec: BatchSpec) -> str:
    digest = hashlib.sha256()
    for part in (Path(spec.batch_dir) / "loaddata.csv", Path(spec.pipeline)):
        digest.update(part.read_bytes())
    digest.update(settings.cellprofiler.encode())
    return digest.hexdigest()


def merge(db: ImageDB, settings: Settings, sub_id: int, batch_dirs: Sequence[str],
          stamp: RunStamp | None = None) -> Merged:
    """Merge the batches' outputs into the results folder (the tables into
    `output_dirs`, concatenated from each batch's converted tables: `batch_tables`);
    the files become outputs of the sub-analysis (it finishes once the
    derived tables are written too). The folder is the analysis's: each sub-analysis's
    merge lists its files in a manifest of its own, so the features step's merge leaves
    the illumination step's ICF files alone. The folder switches as a whole, and only
    while `stamp` is the sub-analysis's current run (StaleRunError otherwise: nothing
    changes); this sub-analysis's derived tables from before do not survive it."""
    out_dir, tables_dir = output_dirs(db, settings, sub_id)
    derived = [str((tables_dir / name).relative_to(out_dir)) for name in (SINGLE_CELL_FILE, PROFILES_FILE)]
    merged = batch_tables.merge_converted([Path(d) for d in batch_dirs], out_dir,
                           manifest=f".merged-files.sub{sub_id}.json", tables_dir=tables_dir,
                           replaces=derived, owner=f"sub{sub_id}", guard=lambda: db.while_current(sub_id, stamp))
    db.add_outputs(sub_id, file_list(merged.files, settings.nas_root), stamp)
    return Merged(tables_dir, merged)


def output_dirs(db: ImageDB, settings: Settings, sub_id: int) -> tuple[Path, Path]:
    """(the analysis's results folder, where the sub-analysis's tables go). The step an
    analysis ends with (no other sub-analysis depends on it) writes its tables to the
    results folder: the feature tables the lab's notebooks read. A step others depend on
    (illumination, QC) writes its tables to a subfolder `sub<id>_<sub_type>`, so the two
    never replace each other's Image table; its other files (illumination functions such as
    ICF_<dye>.npy or <Plate>_Illum<Ch>.npy, images) stay in the results folder, where
    use_icf reads them."""
    sub = db.sub_analysis(sub_id)
    out_dir = results_dir(settings, db.plate_acquisition(sub.plate_acquisition_id), sub.analysis_id)
    if not others_depend_on(db, sub):
        return out_dir, out_dir
    sub_type = planning.SubAnalysisOptions.from_meta(sub.meta).sub_type  # one of planning.SUB_TYPES
    return out_dir, paths.under(out_dir, f"sub{sub_id}_{sub_type}" if sub_type else f"sub{sub_id}",
                                what="tables subfolder")


def tables_dir_of(db: ImageDB, settings: Settings, sub_id: int) -> Path:
    return output_dirs(db, settings, sub_id)[1]


def object_tables(db: ImageDB, settings: Settings, sub_id: int) -> list[str]:
    """The object tables (Nuclei, Cells, ...) among the files the sub-analysis's merge
    wrote: none when its pipeline exports only an Image table (illumination correction,
    QC), and then there is no single-cell table or well profile to derive. Read from its
    recorded outputs, not the folder, which its analysis's other sub-analyses share."""
    outputs = [paths.under_relative(settings.nas_root, f, what="recorded output")
               for f in (db.sub_analysis(sub_id).status or {}).get("outputs", [])]
    return sorted(p.stem for p in outputs
                  if p.suffix == ".parquet" and p.is_file() and "ObjectNumber" in pq.read_schema(p).names)


def write_single_cell(db: ImageDB, settings: Settings, sub_id: int,
                      stamp: RunStamp | None = None) -> SingleCellResult | None:
    """The joined single-cell table (pycytominer layout) from the merged tables; None
    (nothing written) when the merge wrote no object tables."""
    objects = object_tables(db, settings, sub_id)
    if not objects:
        return None
    out_dir = tables_dir_of(db, settings, sub_id)
    return _publish_derived(db, settings, sub_id, stamp, out_dir / SINGLE_CELL_FILE,
                            lambda dest: single_cell.write_single_cell(out_dir, dest, objects=objects))


def write_well_profiles(db: ImageDB, settings: Settings, sub_id: int,
                        stamp: RunStamp | None = None) -> ProfilesResult | None:
    """Per-well median profiles from the single-cell table; None (nothing written) when
    the merge wrote no object tables."""
    if not object_tables(db, settings, sub_id):
        return None
    out_dir = tables_dir_of(db, settings, sub_id)
    return _publish_derived(db, settings, sub_id, stamp, out_dir / PROFILES_FILE,
                            lambda dest: profiles.write_well_profiles(out_dir / SINGLE_CELL_FILE, dest))


def _publish_derived(db: ImageDB, settings: Settings, sub_id: int, stamp: RunStamp | None, final: Path, write):
    """Write a derived table beside the merged tables it comes from (in the version of
    the results folder they are in), then move it into place while `stamp` is the
    current run and that version is still the folder's: a stale run's table never lands
    in a newer run's results."""
    version = final.parent.resolve()
    partial = version / f".{final.name}.{uuid.uuid4().hex}.partial"
    try:
        result = write(partial)
        with db.while_current(sub_id, stamp):
            if final.parent.resolve() != version:
                raise StaleRunError(f"the results folder of sub-analysis {sub_id} was replaced while "
                                    f"{final.name} was written from it; it was not published")
            os.replace(partial, version / final.name)
    finally:
        partial.unlink(missing_ok=True)
    db.add_outputs(sub_id, file_list([final], settings.nas_root), stamp)
    return dataclasses.replace(result, path=final)


def complete(db: ImageDB, settings: Settings, sub_id: int, stamp: RunStamp | None = None) -> dict:
    """Record success: `finish` and `result = {"job_folder", "file_list"}` with every
    output the steps recorded. StaleRunError for a stale run (nothing recorded)."""
    out_dir = results_dir_of(db, settings, sub_id)
    outputs = db.add_outputs(sub_id, [], stamp)
    result = {"job_folder": str(out_dir.relative_to(settings.nas_root)), "file_list": sorted(outputs)}
    if not db.mark_sub_finished(sub_id, result, stamp):
        raise StaleRunError(stale_message(sub_id, stamp))
    return result


def results_dir_of(db: ImageDB, settings: Settings, sub_id: int) -> Path:
    sub = db.sub_analysis(sub_id)
    return results_dir(settings, db.plate_acquisition(sub.plate_acquisition_id), sub.analysis_id)


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
