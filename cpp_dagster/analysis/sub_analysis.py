"""One sub-analysis as a run sees it: resolved once from imagedb when its step plans,
then passed along to every later step (batches, merge, single-cell table, well profiles),
so no step re-derives it.

A pipeline's sub-analyses are its steps. Each kind of step is its own asset in Dagster:
an illumination step (sub_type `icf`), a QC step (`qc`), and the features step (`features`
or unset), which the single-cell table and the well profiles derive from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from cpp_dagster import paths
from cpp_dagster.analysis import planning
from cpp_dagster.imagedb.rows import PlateAcquisition, RunStamp, SubAnalysisStatus
from cpp_dagster.imagedb.store import ImageDB
from cpp_dagster.settings import Settings


class Stage(enum.Enum):
    """The kind of step a sub-analysis is; the value is its asset's name."""

    ILLUMINATION = "illumination_functions"
    QC = "image_qc"
    FEATURES = "feature_tables"

    @classmethod
    def of(cls, sub_type: str | None) -> Stage:
        return {"icf": cls.ILLUMINATION, "qc": cls.QC}.get(sub_type or "", cls.FEATURES)


@dataclass(frozen=True)
class SubAnalysisRun:
    """Everything the steps of one run of a sub-analysis need: ids, options, folders, the
    run's stamp and the status when it was resolved. Small and picklable."""

    sub_id: int
    analysis_id: int
    pipeline_name: str | None
    acquisition: PlateAcquisition
    options: planning.SubAnalysisOptions
    depends_on: tuple[int, ...]
    feeds_others: bool  # another sub-analysis of its analysis depends on it (illumination, QC)
    results_dir: Path  # results/<plate_barcode>/<plate_acquisition_id>/<analysis_id>/
    tables_dir: Path  # where its tables go (the results folder, or sub<id>_<sub_type>/ in it)
    work_dir: Path  # work/sub_<id>/g<generation>/
    stamp: RunStamp
    status: SubAnalysisStatus

    @property
    def stage(self) -> Stage:
        return Stage.of(self.options.sub_type)

    @property
    def plate_barcode(self) -> str:
        return self.acquisition.plate_barcode


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


def resolve(db: ImageDB, settings: Settings, sub_id: int, stamp: RunStamp | None = None) -> SubAnalysisRun:
    """Read a sub-analysis once (its row, acquisition and pipeline, and whether another
    sub-analysis depends on it: one query) and resolve its options and folders. `stamp`
    without a generation takes the current one. Raises PlanningError for options that
    cannot run, paths.UnsafePathError for a value that would leave its root,
    ImageDBError for an unknown id."""
    stamp = stamp or RunStamp()
    found = db.sub_analysis_to_run(sub_id)
    sub, acq = found.sub, found.acquisition
    status = SubAnalysisStatus.from_json(sub.status)
    if stamp.generation is None:
        stamp = RunStamp(status.reruns, stamp.run_id)
    options = planning.SubAnalysisOptions.from_meta(sub.meta)
    out_dir = results_dir(settings, acq, sub.analysis_id)
    tables = out_dir
    if found.feeds_others:
        tables = paths.under(
            out_dir, f"sub{sub_id}_{options.sub_type}" if options.sub_type else f"sub{sub_id}", what="tables subfolder"
        )
    return SubAnalysisRun(
        sub_id=sub_id,
        analysis_id=sub.analysis_id,
        pipeline_name=found.pipeline_name,
        acquisition=acq,
        options=options,
        depends_on=tuple(sub.depends_on_sub_id or ()),
        feeds_others=found.feeds_others,
        results_dir=out_dir,
        tables_dir=tables,
        work_dir=work_dir(settings, sub_id, stamp.generation or 0),
        stamp=stamp,
        status=status,
    )
