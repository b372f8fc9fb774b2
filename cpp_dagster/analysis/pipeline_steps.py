"""A pipeline as a scientist gives it on the command line, as the meta imagedb keeps.

Pure functions: the pipeline's name rule, a step's `KEY=VALUE` options, the
`{"analysis_meta": {...}, "sub_analyses": [{...}, ...]}` they make (each option checked as
planning checks it, `planning.SubAnalysisOptions.from_meta`) and, from what CellProfiler
found in a step's file (`pipeline_check.PipelineNeeds`), what that step needs of a plate.

A pipeline's steps run in the order given, each depending on the one before (as every
submission makes them). Every step but the last runs for the others (illumination, QC) and
says so with `sub_type=icf` or `sub_type=qc`; the last is the features step unless it
says otherwise; a stage appears at most once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from cpp_dagster.analysis.pipeline_check import PipelineNeeds
from cpp_dagster.analysis.planning import IcfNaming, PlanningError, SubAnalysisOptions

MAX_NAME_CHARS = 100
NAME_RULE = (
    f"1 to {MAX_NAME_CHARS} letters, digits and '.', '_', '-', '+', starting with a letter or digit "
    "(it names the pipeline in imagedb and its column of partitions in the Dagster UI)"
)
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._+-]{{0,{MAX_NAME_CHARS - 1}}}$")
MAX_DESCRIPTION_CHARS = 1000
MAX_VALUE_CHARS = 2000

# the sub-analysis options a step may set (planning.SubAnalysisOptions); `pipeline_file`
# is the step's FILE, `type` is always cellprofiler
STEP_KEYS = (
    "sub_type",
    "batch_size",
    "cp_version",
    "channels",
    "z",
    "use_icf",
    "icf_naming",
    "job_timeout",
    "priority",
    "well_filter",
    "site_filter",
)
_TEXT_KEYS = {"sub_type", "cp_version", "z", "icf_naming"}  # `cp_version=5.0` stays the text 5.0
_LIST_KEYS = {"channels", "well_filter", "site_filter"}  # `channels=DNA,ER` or a JSON list
FEEDING_STAGES = ("icf", "qc")
PLACEHOLDER_PLATE = "PLATE"  # broad illumination file names start with the plate barcode


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
SHOWN_CHARS = 200


def printable(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`value` for a terminal or a table: control characters escaped (a file name or a
    value written by hand cannot move the cursor or end a row), cut at `limit`."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PipelineStepError(ValueError):
    """A pipeline or one of its steps cannot be registered as given; says why."""


def pipeline_name(value: object) -> str:
    """`value` once it follows NAME_RULE (no quote, separator, space or control character)."""
    if not isinstance(value, str) or not _NAME.match(value) or "..." in value:
        long = isinstance(value, str) and len(value) > 120
        shown = f"{value[:100]!r}... ({len(value):,} characters)" if long else repr(value)
        raise PipelineStepError(f"pipeline name {shown} is not a usable name: use {NAME_RULE}")
    return value


def description(value: str | None) -> str | None:
    if value is None:
        return None
    text = " ".join(value.split())
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise PipelineStepError(f"the description is {len(text):,} characters; at most {MAX_DESCRIPTION_CHARS:,}")
    return text


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def step_options(pairs: Sequence[str], where: str) -> dict[str, Any]:
    """`["batch_size=0", "sub_type=icf"]` -> `{"batch_size": 0, "sub_type": "icf"}`: each
    value as JSON where it is JSON (numbers, true/false, lists), else as text; the list
    options also as comma-separated text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise PipelineStepError(f"{where}: expected KEY=VALUE, got {pair[:100]!r}")
        if key not in STEP_KEYS:
            hint = " (the step's FILE is its pipeline file)" if key == "pipeline_file" else ""
            raise PipelineStepError(
                f"{where}: unknown option {key[:100]!r}{hint}; the options are {', '.join(STEP_KEYS)}"
            )
        if key in options:
            raise PipelineStepError(f"{where}: option {key!r} is given twice")
        if len(text) > MAX_VALUE_CHARS:
            raise PipelineStepError(f"{where}: the value of {key} is longer than {MAX_VALUE_CHARS:,} characters")
        if key in _LIST_KEYS and not text.lstrip().startswith("["):
            items = [item.strip() for item in text.split(",") if item.strip()]
            options[key] = [_json_or_text(item) if key == "site_filter" else item for item in items]
        else:
            options[key] = text if key in _TEXT_KEYS else _json_or_text(text)
    return options


def step_label(index: int, count: int, source: str) -> str:
    return f"step {index + 1} of {count} ({source})" if count > 1 else f"pipeline file {source}"


def sub_analyses(steps: Sequence[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The `sub_analyses` of a pipeline from its steps `(source, pipeline_file, options)`,
    in order; each checked as planning will check it (PipelineStepError naming the step)."""
    if not steps:
        raise PipelineStepError("a pipeline needs at least one step (a .cppipe file)")
    count, seen, metas = len(steps), {}, []
    for index, (source, pipeline_file, options) in enumerate(steps):
        where = step_label(index, count, source)
        meta = {"type": "cellprofiler", **options, "pipeline_file": pipeline_file}
        last = index == count - 1
        if last:
            meta.setdefault("sub_type", "features")
        elif meta.get("sub_type") not in FEEDING_STAGES:
            raise PipelineStepError(
                f"{where} runs before another step, which depends on it: give it sub_type=icf "
                f"(illumination functions) or sub_type=qc; the features step is the last"
            )
        try:
            SubAnalysisOptions.from_meta(meta)
        except PlanningError as e:
            raise PipelineStepError(f"{where}: {e}") from None
        if meta["sub_type"] in seen:
            raise PipelineStepError(
                f"{where} and step {seen[meta['sub_type']] + 1} are both sub_type {meta['sub_type']}: "
                "a pipeline has at most one step of each stage"
            )
        seen[meta["sub_type"]] = index
        metas.append(meta)
    return metas


def pipeline_meta(subs: list[dict[str, Any]], description_text: str | None) -> dict[str, Any]:
    analysis_meta = {"description": description_text} if description_text else {}
    return {"analysis_meta": analysis_meta, "sub_analyses": subs}


def _illumination_image(image: str, naming: IcfNaming) -> bool:
    return image.startswith("ICF_" if naming is IcfNaming.PHARMBIO else "Illum")


def _illumination_file(image: str, naming: IcfNaming) -> str:
    return f"{image}.npy" if naming is IcfNaming.PHARMBIO else f"<Plate>_{image}.npy"


def needs_summary(needs: PipelineNeeds, options: SubAnalysisOptions) -> dict[str, Any]:
    """What a step needs of a plate and what it makes: `channels` (the images its LoadData
    must provide from the channel map), `illumination_files` (with use_icf: the functions an
    earlier step must have written), `exports` (`all` or the tables), `saves_files`."""
    images = sorted(needs.needs_images)
    illumination = [i for i in images if options.use_icf and _illumination_image(i, options.icf_naming)]
    exports: str | list[str] = (
        "all" if any(e.everything for e in needs.exports) else sorted({t for e in needs.exports for t in e.tables})
    )
    return {
        "channels": [i for i in images if i not in illumination],
        "illumination_files": [_illumination_file(i, options.icf_naming) for i in illumination],
        "exports": exports,
        "saves_files": needs.saves_files,
    }
