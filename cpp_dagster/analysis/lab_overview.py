"""The lab overview as people read it: why a submitted sub-analysis has not started,
what a running one is doing, why a failed one failed, where a finished one's results
are; as aligned text (`cpp-dagster status`), as a markdown table (for a Dagster asset's
description) or as dicts (`--json`). Pure functions over `ImageDB.lab_overview()` rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from cpp_dagster.imagedb.lab_overview import OverviewRow

_DEPENDENCY_STATE = {"running": "running", "waiting": "not started"}


@dataclass(frozen=True)
class OverviewLine:
    """One line of the overview, every field ready to show."""

    plate: str  # the barcode, with the acquisition id when the barcode has several
    plate_barcode: str
    plate_acquisition_id: int
    pipeline: str
    analysis_id: int | None
    sub_id: int | None
    stage: str  # `2/3 features`: position in its analysis and sub_type
    state: str  # waiting / running / finished / failed / not run
    detail: str  # why it waits, its progress, its failure message
    result_folder: str  # result.job_folder, relative to the NAS
    result_url: str


def waiting_reason(row: OverviewRow) -> str:
    """Why a submitted sub-analysis has not started, in the order the launch side
    decides it (a row the sensor will refuse, a failed or missing dependency, the
    acquisition, an unfinished dependency, a failed analysis); `waiting to be launched`
    when nothing holds it back."""
    if row.shape_problem:
        return row.shape_problem
    for dep in row.dependencies:
        if dep.state in ("failed", "missing"):
            return f"sub-analysis {dep.sub_id} {'failed' if dep.state == 'failed' else 'does not exist'}"
    if not row.acquisition_finished:
        return "acquisition not finished"
    for dep in row.dependencies:
        if dep.state != "finished":
            return f"waiting for sub-analysis {dep.sub_id} ({_DEPENDENCY_STATE.get(dep.state, dep.state)})"
    if row.analysis_failed:
        return f"analysis {row.analysis_id} failed"
    return "waiting to be launched"


def detail(row: OverviewRow) -> str:
    """The reason (waiting), the progress (running), the failure message (failed)."""
    if row.state == "waiting":
        return waiting_reason(row)
    if row.state == "running":
        return row.message or "running"
    if row.state == "failed":
        return row.message or "failed (no message recorded)"
    if row.state == "not run" and not row.acquisition_finished:
        return "acquisition not finished"
    return ""


def relative_folder(job_folder: str | None, nas_root: Path | None = None) -> str:
    """`result.job_folder` relative to the NAS root (older rows may hold it absolute)."""
    if not job_folder:
        return ""
    folder = Path(job_folder)
    if nas_root is not None and folder.is_absolute() and folder.is_relative_to(nas_root):
        return folder.relative_to(nas_root).as_posix()
    return job_folder


def result_url(folder: str, template: str | None) -> str:
    """The template with `{path}` replaced by the folder, URL-quoted (`/` kept)."""
    if not folder or not template or Path(folder).is_absolute():
        return ""
    return template.replace("{path}", quote(folder, safe="/"))


def _stage(row: OverviewRow) -> str:
    if row.sub_id is None:
        return "-"
    return " ".join(part for part in (f"{row.stage}/{row.stages}", row.sub_type) if part)


def queued_detail(run_id: str) -> str:
    return (
        f"launched, queued in Dagster's run queue (run {run_id[:8]}): it starts when the queue's limits "
        "let it (one run per plate x pipeline, the runs at once)"
    )


def overview_lines(
    rows: Iterable[OverviewRow],
    *,
    url_template: str | None = None,
    nas_root: Path | None = None,
    queued: dict[int, str] | None = None,
) -> list[OverviewLine]:
    """`queued`: sub-analysis id -> the id of its run waiting in Dagster's run queue (the
    UI's overview knows it; imagedb alone does not): such a sub-analysis, which nothing
    in imagedb holds back, says so instead of `waiting to be launched`."""
    lines = []
    for row in rows:
        folder = relative_folder(row.job_folder, nas_root) if row.state == "finished" else ""
        why = detail(row)
        if why == "waiting to be launched" and row.sub_id in (queued or {}):
            why = queued_detail(queued[row.sub_id])
        several = row.barcode_acquisitions > 1
        lines.append(
            OverviewLine(
                plate=f"{row.plate_barcode} (acq {row.plate_acquisition_id})" if several else row.plate_barcode,
                plate_barcode=row.plate_barcode,
                plate_acquisition_id=row.plate_acquisition_id,
                pipeline=row.pipeline_name or "-",
                analysis_id=row.analysis_id,
                sub_id=row.sub_id,
                stage=_stage(row),
                state=row.state,
                detail=why,
                result_folder=folder,
                result_url=result_url(folder, url_template),
            )
        )
    return lines


def as_dicts(lines: Sequence[OverviewLine]) -> list[dict]:
    return [asdict(line) for line in lines]


def _one_line(text: str, limit: int | None) -> str:
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _cells(
    lines: Sequence[OverviewLine], limit: int | None, cell_limit: int | None = None
) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the table; the URL column only when some line has a URL; the
    detail (which may be long, cut at `limit`) last; every other cell on one line, cut
    at `cell_limit`."""
    with_url = any(line.result_url for line in lines)
    header = ["PLATE", "PIPELINE", "STAGE", "SUB", "STATE", "RESULT", *(["URL"] if with_url else []), "DETAIL"]
    cells = []
    for line in lines:
        cells.append(
            [
                *(
                    _one_line(text, cell_limit)
                    for text in (
                        line.plate,
                        line.pipeline,
                        line.stage,
                        "" if line.sub_id is None else str(line.sub_id),
                        line.state,
                        line.result_folder,
                    )
                ),
                *([line.result_url] if with_url else []),
                _one_line(line.detail, limit),
            ]
        )
    return header, cells


def text_table(lines: Sequence[OverviewLine], *, detail_limit: int | None = 120) -> str:
    """Aligned columns for a terminal; long details cut at `detail_limit` characters."""
    header, cells = _cells(lines, detail_limit)
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *cells])


def markdown_table(
    lines: Sequence[OverviewLine], *, detail_limit: int | None = 300, cell_limit: int | None = None
) -> str:
    """The same table in markdown (`|` escaped, one line per cell, URLs as links)."""
    header, cells = _cells(lines, detail_limit, cell_limit)
    url = header.index("URL") if "URL" in header else None

    def cell(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|")

    out = ["| " + " | ".join(h.lower() for h in header) + " |", "|" + "---|" * len(header)]
    for row in cells:
        shown = [cell(c) for c in row]
        if url is not None and row[url]:
            shown[url] = f"[link]({row[url]})"
        out.append("| " + " | ".join(shown) + " |")
    return "\n".join(out)


# The UI's overview is bounded: the count per state and at most this many lines that need
# a person, each cell cut, so one observation stays a few tens of KB at any lab size
# (every line of the whole table: `cpp-dagster status`).
ATTENTION_ROWS = 50
ATTENTION_CELL_LIMIT = 80
ATTENTION_DETAIL_LIMIT = 300
STATES = ("not run", "waiting", "running", "finished", "failed")
_ATTENTION_ORDER = {"failed": 0, "waiting": 1}


@dataclass(frozen=True)
class AttentionSummary:
    """The count of lines per state and the first lines that need attention (failed, then
    waiting, each with its reason), at most `ATTENTION_ROWS`; `left_out` more were not shown."""

    counts: dict[str, int]
    shown: tuple[OverviewLine, ...]
    left_out: int


def attention_summary(lines: Iterable[OverviewLine], *, rows: int = ATTENTION_ROWS) -> AttentionSummary:
    counts = dict.fromkeys(STATES, 0)
    attention = []
    for line in lines:
        counts[line.state] = counts.get(line.state, 0) + 1
        if line.state in _ATTENTION_ORDER:
            attention.append(line)
    attention.sort(key=lambda line: _ATTENTION_ORDER[line.state])  # stable: overview order within a state
    return AttentionSummary(counts, tuple(attention[:rows]), max(0, len(attention) - rows))


def attention_markdown(summary: AttentionSummary) -> str:
    """The summary as a short markdown text: the counts, then the lines that need attention
    (cells cut), and how many were left out with the command that prints them all."""
    total = sum(summary.counts.values())
    counts = ", ".join(f"{n:,} {state}" for state, n in summary.counts.items())
    out = [f"**{total:,} lines** (plate acquisition x pipeline x step): {counts}."]
    if not summary.shown:
        out.append("\nNothing needs attention: nothing failed or waits.")
        return "\n".join(out)
    out.append("\nNeeds attention (failed first, then waiting, with the reason):\n")
    out.append(markdown_table(summary.shown, detail_limit=ATTENTION_DETAIL_LIMIT, cell_limit=ATTENTION_CELL_LIMIT))
    if summary.left_out:
        out.append(
            f"\n{summary.left_out:,} more lines need attention and are not shown here: `cpp-dagster status` "
            "prints every line (`--plate BARCODE` for one plate, `--json` for scripts)."
        )
    return "\n".join(out)
