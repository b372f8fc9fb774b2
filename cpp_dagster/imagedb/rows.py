"""Typed rows of imagedb: what the query module takes and returns."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from psycopg2 import sql

from cpp_dagster.ids import parse_id

# `status->>'reruns'` as a whole number in SQL, by the rule of cpp_dagster.ids: a value
# that is not one (written by hand: "1.0", "x", "²") counts as 0, instead of failing every
# update of the row (a cast would), so its failure can still be recorded.
RERUNS = sql.SQL(
    "(CASE WHEN status->>'reruns' ~ '^[0-9]+$' AND length(status->>'reruns') <= 9"
    " THEN (status->>'reruns')::int ELSE 0 END)"
)

PRIORITY_RANGE = (1, 9)  # imagedb's priority columns: 1 = high; unset is ready.DEFAULT_PRIORITY


class ImageDBError(Exception):
    """imagedb does not hold what an operation needs (unknown id, missing pipeline...)."""


def whole_number(value: Any) -> int:
    """An integer from an int or a string of one; bools and fractional numbers are refused."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def whole_number_in(key: str, value: Any, low: int | None, high: int | None, unit: str) -> int:
    """`value` as a whole number in [low, high] (None: unbounded); ValueError naming `key`,
    the bounds and `unit` otherwise (a message for the scientist who wrote it)."""
    bounds = (
        f" from {low} to {high}"
        if low is not None and high is not None
        else f" of at least {low}"
        if low is not None
        else ""
    )
    expected = f"{key!r} must be a whole number{bounds}, in {unit}; got {value!r}"
    try:
        number = whole_number(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(expected) from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(expected)
    return number


def priority_of(value: Any) -> int | None:
    """A priority (PRIORITY_RANGE, 1 = high) from meta or a submission; None when unset.
    ValueError naming the range otherwise (imagedb's column is an integer)."""
    if value is None:
        return None
    low, high = PRIORITY_RANGE
    return whole_number_in("priority", value, low, high, f"{low} = high, {high} = low")


@dataclass(frozen=True)
class PlateAcquisition:
    id: int
    plate_barcode: str
    name: str | None
    project: str | None
    channel_map_id: int | None
    timepoint: int | None
    folder: str | None
    finished: dt.datetime | None


@dataclass(frozen=True)
class Image:
    """One registered image file: one (timepoint, well, site, z, channel)."""

    well: str
    site: int
    channel: int
    path: str
    z: int | None = 0
    timepoint: int | None = 1


@dataclass(frozen=True)
class SubAnalysis:
    sub_id: int
    analysis_id: int
    plate_acquisition_id: int
    meta: dict[str, Any]
    depends_on_sub_id: list[int]
    priority: int | None
    start: dt.datetime | None
    finish: dt.datetime | None
    error: dt.datetime | None
    status: Any
    result: Any


@dataclass(frozen=True)
class SubAnalysisToRun:
    """A sub-analysis with what a run of it needs from imagedb, read in one query."""

    sub: SubAnalysis
    acquisition: PlateAcquisition
    pipeline_name: str | None
    feeds_others: bool  # another sub-analysis of its analysis depends on it (illumination, QC)


@dataclass(frozen=True)
class ReadySubAnalysis:
    """A sub-analysis the sensor may launch: submitted, acquisition finished, dependencies done."""

    sub_id: int
    analysis_id: int
    plate_acquisition_id: int
    plate_barcode: str
    priority: int
    meta: dict[str, Any] = field(default_factory=dict)
    pipeline_name: str | None = None


@dataclass(frozen=True)
class SubmittedAnalysis:
    """The rows a submission created; `error` says why an automatic submission failed
    (then the analysis row is recorded failed, with no sub-analyses)."""

    analysis_id: int
    sub_ids: list[int] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class RunStamp:
    """Which run of a sub-analysis a write comes from: its re-run generation (the
    `reruns` count in `status` when the run was requested, run tag `imagedb/generation`)
    and its run id (the root run for a re-execution, which continues the same run).
    A write stamped with an older generation, or with another run than the one that
    started the current generation, is refused. None means not known (not checked)."""

    generation: int | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class SubAnalysisStatus:
    """The `status` JSON of a sub-analysis, typed. Written by the outcome queries
    (outcome.py); read here, in one place. A row whose status is not a JSON object (written
    by hand) reads as an empty status rather than failing its reader."""

    state: str | None = None
    message: str | None = None
    batches: int | None = None
    image_sets: int | None = None
    finished_batches: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    run_id: str | None = None  # the run that started the current generation
    reruns: int = 0
    claimed_by_run: str | None = None  # a UI run that submitted it and runs it itself

    @classmethod
    def from_json(cls, value: Any) -> SubAnalysisStatus:
        if not isinstance(value, dict):
            return cls()

        def text(key):
            v = value.get(key)
            return v if isinstance(v, str) else None

        def whole(key):
            return parse_id(value.get(key))

        def texts(key):
            v = value.get(key)
            return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else ()

        return cls(
            state=text("state"),
            message=text("message"),
            batches=whole("batches"),
            image_sets=whole("image_sets"),
            finished_batches=texts("finished_batches"),
            outputs=texts("outputs"),
            run_id=text("run_id"),
            reruns=whole("reruns") or 0,
            claimed_by_run=text("claimed_by_run"),
        )
