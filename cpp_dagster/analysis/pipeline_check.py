"""Check a sub-analysis's `.cppipe` against its plan before any batch runs.

Headless CellProfiler does not stop on a pipeline that cannot do what it is asked: a
module it cannot build (a missing plugin, an unsupported setting) is logged and left
out, a pipeline without ExportToSpreadsheet exits 0 having written no table, a missing
image stops every batch. So at planning, the pipeline is loaded once by CellProfiler
itself (`cellprofiler_env/inspect_pipeline.py`, one short process in the CellProfiler
environment) and what it needs and exports (`PipelineNeeds`) is compared with what
this acquisition's LoadData CSV provides. Every problem is listed at once, in a
`PipelineCheckError` (a `planning.PlanningError`: the sub-analysis fails with it in
imagedb).

The inspection depends only on the file's bytes and the CellProfiler build, so it is
cached (`<CPP_PIPELINE_CHECK_CACHE>/<sha256>.json`, by default under the work root); the comparison with an
acquisition's channel map is pure Python and runs every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cpp_dagster.analysis.cellprofiler import CellProfilerError, cellprofiler_environment, version
from cpp_dagster.analysis.planning import PlanningError

INSPECT_SCRIPT = Path(__file__).resolve().parent / "cellprofiler_env" / "inspect_pipeline.py"
INSPECT_TIMEOUT_S = 300
LOG_TAIL_CHARS = 2000
INPUT_MODULES_OTHER_THAN_LOADDATA = "Images/Metadata/NamesAndTypes/Groups"


class PipelineCheckError(PlanningError):
    """The pipeline cannot run on this sub-analysis's images as planned; says why."""


class PipelineInspectionError(CellProfilerError):
    """CellProfiler itself could not be run to inspect the pipeline (not the pipeline's fault)."""


@dataclass(frozen=True)
class ModuleBlock:
    """One module of the file, in file order; `error` when CellProfiler cannot build it."""

    number: int
    name: str
    enabled: bool
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} #{self.number}"


@dataclass(frozen=True)
class Export:
    """One enabled ExportToSpreadsheet: all measurement types, or an explicit table list."""

    module: str
    everything: bool
    tables: tuple[str, ...]

    @property
    def exports_image_table(self) -> bool:
        return self.everything or "Image" in self.tables


@dataclass(frozen=True)
class PipelineNeeds:
    """What a pipeline needs and exports, as CellProfiler loaded it."""

    modules: tuple[ModuleBlock, ...]
    load_error: str | None
    image_inputs: tuple[str, ...]  # enabled input modules: LoadData, NamesAndTypes, ...
    needs_images: dict[str, tuple[str, ...]]  # image name -> modules using it before any module makes it
    exports: tuple[Export, ...]

    @classmethod
    def from_json(cls, data: dict) -> PipelineNeeds:
        return cls(
            modules=tuple(
                ModuleBlock(int(m["number"]), str(m["name"]), bool(m["enabled"]), m.get("error"))
                for m in data["modules"]
            ),
            load_error=data.get("load_error"),
            image_inputs=tuple(data["image_inputs"]),
            needs_images={str(k): tuple(v) for k, v in data["needs_images"].items()},
            exports=tuple(Export(e["module"], bool(e["everything"]), tuple(e["tables"])) for e in data["exports"]),
        )

    @property
    def unloadable(self) -> list[ModuleBlock]:
        """Enabled modules CellProfiler could not build (a disabled one is left out on purpose)."""
        return [m for m in self.modules if m.enabled and m.error]

    @property
    def saves_files(self) -> bool:
        return any(m.name == "SaveImages" and m.enabled and not m.error for m in self.modules)


def problems(
    needs: PipelineNeeds,
    *,
    pipeline_file: str,
    dyes: Sequence[str] | None,
    illumination_images: Iterable[str],
    use_icf: bool,
    files_only_allowed: bool = False,
) -> list[str]:
    """Why `needs` cannot run on a LoadData CSV of `dyes` (plus `illumination_images`
    with `use_icf`); empty when it can. `files_only_allowed`: the sub-analysis is a step
    others depend on (illumination correction), which may write files (SaveImages) and
    no table. `dyes` None: no plate to compare the images with (`cpp-dagster pipeline
    add` without a channel map), so only what holds for every plate is checked."""
    name = f"pipeline {pipeline_file!r}"
    if needs.load_error:
        return [f"{name} cannot be read by CellProfiler: {needs.load_error}"]
    found = []
    if needs.unloadable:
        listed = "; ".join(f"{m.label} ({m.error})" for m in needs.unloadable)
        found.append(
            f"{name} has module(s) this CellProfiler cannot load (a plugin that is not installed or "
            f"a setting it does not support), which it would silently leave out: {listed}"
        )
    if "LoadData" not in needs.image_inputs:
        if "NamesAndTypes" in needs.image_inputs:
            found.append(
                f"{name} reads its images through NamesAndTypes; cpp-dagster feeds images through "
                f"LoadData: replace {INPUT_MODULES_OTHER_THAN_LOADDATA} by LoadData"
            )
        else:
            found.append(f"{name} has no LoadData module; cpp-dagster feeds images through LoadData")
    if not any(e.exports_image_table for e in needs.exports):
        if not needs.exports and not (files_only_allowed and needs.saves_files):
            found.append(
                f"{name} exports no tables (it has no ExportToSpreadsheet module): add one that "
                "exports the Image table and the object tables you need"
            )
        elif needs.exports:
            found.append(
                f"{name} does not export the Image table: in "
                f"{', '.join(e.module for e in needs.exports)} choose 'Export all measurement types' "
                "or add Image to the data to export"
            )
    if "LoadData" in needs.image_inputs and dyes is not None:
        found += _image_problems(needs, name, dyes, set(illumination_images), use_icf)
    return found


def _image_problems(
    needs: PipelineNeeds, name: str, dyes: Sequence[str], illumination: set[str], use_icf: bool
) -> list[str]:
    provided = set(dyes) | (illumination if use_icf else set())
    missing = sorted(set(needs.needs_images) - provided)
    found = []
    if missing:
        listed = ", ".join(f"{image} (used by {', '.join(needs.needs_images[image])})" for image in missing)
        offer = ", ".join(dyes)
        if use_icf:
            offer += f" and the illumination images {', '.join(sorted(illumination))}"
        hint = "; the illumination images need use_icf" if not use_icf and set(missing) <= illumination else ""
        found.append(
            f"{name} needs image(s) that this plate acquisition's channel map does not provide: "
            f"{listed}. Its LoadData provides {offer}{hint}"
        )
    if use_icf and not illumination & set(needs.needs_images):
        found.append(
            f"use_icf is set but {name} loads no illumination image ({', '.join(sorted(illumination))}): "
            "use a pipeline that applies them (CorrectIlluminationApply) or unset use_icf"
        )
    return found


def check(needs: PipelineNeeds, **kwargs) -> None:
    """Raise PipelineCheckError listing every problem `problems` finds."""
    found = problems(needs, **kwargs)
    if found:
        raise PipelineCheckError(
            "; ".join(found) if len(found) == 1 else f"{len(found)} problems: " + " | ".join(found)
        )


def cache_key(pipeline: Path, cellprofiler: str, version: str) -> str:
    """SHA-256 of the pipeline file's bytes, the CellProfiler executable's path, the version
    it reports (the same path in another cp_version's image, or a reinstall, is another
    CellProfiler) and the inspection script (a changed script never reads an old result)."""
    digest = hashlib.sha256(Path(pipeline).read_bytes())
    digest.update(b"\0" + cellprofiler.encode() + b"\0" + version.encode() + b"\0" + INSPECT_SCRIPT.read_bytes())
    return digest.hexdigest()


def _read_cached(cache: Path) -> PipelineNeeds | None:
    """The cached inspection; None when there is none yet or it is unreadable (inspect again)."""
    try:
        return PipelineNeeds.from_json(json.loads(cache.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def inspect(pipeline: Path, *, cellprofiler: str, cache_dir: Path) -> PipelineNeeds:
    """What `pipeline` needs and exports: from the cache when this file (same bytes) was
    inspected with this CellProfiler before, otherwise from one CellProfiler process."""
    cache = Path(cache_dir) / f"{cache_key(pipeline, cellprofiler, version(cellprofiler, cache_dir))}.json"
    cached = _read_cached(cache)
    if cached is not None:
        # last used now: the work area's clean-up removes entries unused for the retention
        with contextlib.suppress(OSError):  # a read-only cache still answers
            os.utime(cache)
        return cached
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=cache.name, suffix=".tmp", dir=cache.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _run_inspector(pipeline, cellprofiler, tmp)
        needs = PipelineNeeds.from_json(json.loads(tmp.read_text()))
        tmp.replace(cache)  # atomic: a reader sees the whole result or none
    finally:
        tmp.unlink(missing_ok=True)
    return needs


def cellprofiler_python(cellprofiler: str) -> Path:
    """The interpreter of the CellProfiler environment: the `python` next to its executable."""
    executable = shutil.which(cellprofiler) or cellprofiler
    python = Path(executable).parent / "python"
    if not python.exists():
        raise PipelineInspectionError(
            f"no python next to the CellProfiler executable {cellprofiler!r} (looked for {python})"
        )
    return python


def _run_inspector(pipeline: Path, cellprofiler: str, out: Path) -> None:
    args = [str(cellprofiler_python(cellprofiler)), str(INSPECT_SCRIPT), str(pipeline), str(out)]
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S, env=cellprofiler_environment()
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PipelineInspectionError(f"could not inspect pipeline {pipeline.name} with CellProfiler: {e}") from e
    if proc.returncode != 0:
        raise PipelineInspectionError(
            f"inspecting pipeline {pipeline.name} with CellProfiler failed with exit code {proc.returncode}: "
            f"{(proc.stdout + proc.stderr)[-LOG_TAIL_CHARS:]}"
        )
