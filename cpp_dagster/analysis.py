"""What happens to one sub-analysis, step by step: prepare (plan and write LoadData CSVs),
run one batch, merge, derive the single-cell table and well profiles, complete (record
the outcome). The Dagster ops in `defs/` are
thin wrappers around these functions, so the CLI and tests use the same code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from cpp_dagster import cellprofiler, paths, pipeline_check, planning
from cpp_dagster.config import Settings
from cpp_dagster.features import profiles, single_cell
from cpp_dagster.features.merge import MergeResult, merge_batches
from cpp_dagster.features.profiles import ProfilesResult
from cpp_dagster.features.single_cell import SingleCellResult
from cpp_dagster.imagedb.rows import PlateAcquisition, SubAnalysis
from cpp_dagster.imagedb.store import ImageDB

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


@dataclass(frozen=True)
class Prepared:
    sub_analysis: SubAnalysis
    acquisition: PlateAcquisition
    results_dir: Path
    batches: list[BatchSpec]

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


def work_dir(settings: Settings, sub_id: int) -> Path:
    return paths.under(settings.work_root, f"sub_{sub_id}", what="sub-analysis work folder")


def prepare(db: ImageDB, settings: Settings, sub_id: int) -> Prepared:
    """Plan a sub-analysis, write one LoadData CSV per batch and mark it started.
    Raises planning.PlanningError or cellprofiler.CellProfilerError with a readable
    message for anything wrong with the analysis as submitted, including a pipeline
    that cannot run on this plan (`check_pipeline`), before any batch is written."""
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
        batch_dir = paths.under(work_dir(settings, sub_id), batch.name, what="batch")
        batch_dir.mkdir(parents=True, exist_ok=True)
        text = planning.loaddata_csv(batch, plan.dyes, plate_barcode=acq.plate_barcode,
                                     plate_acquisition_id=acq.id, icf_folder=icf_folder,
                                     icf_naming=options.icf_naming)
        _write_atomically(batch_dir / "loaddata.csv", text)
        specs.append(BatchSpec(sub_id, batch.name, batch.index, str(batch_dir), str(pipeline),
                               len(batch.image_sets), options.job_timeout, options.cp_version,
                               options.sub_type, options.priority))
    db.mark_sub_started(sub_id, batches=len(specs), image_sets=plan.image_set_count)
    return Prepared(sub, acq, out_dir, specs)


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
    finished this very batch (same LoadData CSV, pipeline and CellProfiler): a re-run
    then reuses its verified outputs, so only failed batches run again."""
    batch_dir = Path(spec.batch_dir)
    marker, fingerprint = batch_dir / "done.json", batch_fingerprint(settings, spec)
    if marker.is_file() and (batch_dir / "output").is_dir():
        done = json.loads(marker.read_text())
        if done.get("fingerprint") == fingerprint:
            return cellprofiler.BatchOutcome(**{**done["outcome"], "reused": True})
    marker.unlink(missing_ok=True)
    outcome = cellprofiler.run_batch(
        cellprofiler=settings.cellprofiler,
        pipeline=Path(spec.pipeline),
        batch_dir=batch_dir,
        expected_image_sets=spec.image_sets,
        timeout_s=spec.job_timeout,
        echo=echo,
    )
    _write_atomically(marker, json.dumps({"fingerprint": fingerprint, "outcome": dataclasses.asdict(outcome)}))
    return outcome


def batch_fingerprint(settings: Settings, spec: BatchSpec) -> str:
    digest = hashlib.sha256()
    for part in (Path(spec.batch_dir) / "loaddata.csv", Path(spec.pipeline)):
        digest.update(part.read_bytes())
    digest.update(settings.cellprofiler.encode())
    return digest.hexdigest()


def merge(db: ImageDB, settings: Settings, sub_id: int, batch_dirs: Sequence[str]) -> Merged:
    """Merge the batches' outputs into the results folder (the tables into
    `output_dirs`); the files become outputs of the sub-analysis (it finishes once the
    derived tables are written too). The folder is the analysis's: each sub-analysis's
    merge lists its files in a manifest of its own, so the features step's merge leaves
    the illumination step's ICF files alone."""
    out_dir, tables_dir = output_dirs(db, settings, sub_id)
    merged = merge_batches([Path(d) / "output" for d in batch_dirs], out_dir,
                           manifest=f".merged-files.sub{sub_id}.json", tables_dir=tables_dir)
    db.add_outputs(sub_id, file_list(merged.files, settings.nas_root))
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


def write_single_cell(db: ImageDB, settings: Settings, sub_id: int) -> SingleCellResult | None:
    """The joined single-cell table (pycytominer layout) from the merged tables; None
    (nothing written) when the merge wrote no object tables."""
    objects = object_tables(db, settings, sub_id)
    if not objects:
        return None
    out_dir = tables_dir_of(db, settings, sub_id)
    result = single_cell.write_single_cell(out_dir, out_dir / SINGLE_CELL_FILE, objects=objects)
    db.add_outputs(sub_id, file_list([result.path], settings.nas_root))
    return result


def write_well_profiles(db: ImageDB, settings: Settings, sub_id: int) -> ProfilesResult | None:
    """Per-well median profiles from the single-cell table; None (nothing written) when
    the merge wrote no object tables."""
    if not object_tables(db, settings, sub_id):
        return None
    out_dir = tables_dir_of(db, settings, sub_id)
    result = profiles.write_well_profiles(out_dir / SINGLE_CELL_FILE, out_dir / PROFILES_FILE)
    db.add_outputs(sub_id, file_list([result.path], settings.nas_root))
    return result


def complete(db: ImageDB, settings: Settings, sub_id: int) -> dict:
    """Record success: `finish` and `result = {"job_folder", "file_list"}` with every
    output the steps recorded."""
    out_dir = results_dir_of(db, settings, sub_id)
    outputs = db.add_outputs(sub_id, [])
    result = {"job_folder": str(out_dir.relative_to(settings.nas_root)), "file_list": sorted(outputs)}
    db.mark_sub_finished(sub_id, result)
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
