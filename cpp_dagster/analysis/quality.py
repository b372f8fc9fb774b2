"""Quality that counts: the five data-quality checks of a features step's merged tables
(`features/checks.py`), what imagedb records of them and what they decide.

Their outcomes go into the sub-analysis's `status.checks` in imagedb, in the same
transaction as its outcome: `[{"name", "severity", "passed", "message"}, ...]`. A
sub-analysis whose meta says `quality: block` fails, before it is marked finished, when an
ERROR check (`image_rows_match_plan`, `all_batches_present`) did not pass: `error` and a
message naming the check. Its tables stay in the results folder: the checks ran on the
published tables, they are what a scientist opens to see what went wrong, a re-run
replaces them, and imagedb (failed, no `result`) says they are not a finished analysis.
Without it (`quality: warn`, the default), every check only warns, as in Dagster, and
imagedb has the warning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cpp_dagster.features import checks
from cpp_dagster.features.checks import CheckOutcome

if TYPE_CHECKING:
    from cpp_dagster.analysis.lifecycle import Merged

# A pipeline that exports only an Image table (illumination correction, QC): no cells to
# count per well, no object features, no single-cell table or well profiles.
NO_OBJECT_TABLES = "no object tables (the pipeline exports only an Image table)"


class QualityBlocked(Exception):
    """A failed ERROR quality check failed the sub-analysis (`quality: block`)."""


def feature_checks(merged: Merged) -> dict[str, CheckOutcome]:
    """The data-quality checks of the merged tables, by name (pure results)."""
    tables, objects = merged.tables_dir, list(merged.object_tables)
    return {
        "image_rows_match_plan": checks.image_rows_match_plan(tables, merged.sub.status.image_sets or 0),
        "all_batches_present": checks.all_batches_present(tables, list(merged.batches)),
        "well_cell_counts": (
            checks.well_counts_outliers(tables, objects=objects) if objects else checks.not_applicable(NO_OBJECT_TABLES)
        ),
        "nan_share": checks.nan_share(tables, tables=objects) if objects else checks.not_applicable(NO_OBJECT_TABLES),
        "column_drift": checks.column_drift({t.name: list(t.drift) for t in merged.merge.tables.values()}),
    }


def status_entries(found: dict[str, CheckOutcome]) -> list[dict]:
    """What imagedb's `status.checks` holds."""
    return [
        {"name": name, "severity": c.severity, "passed": c.passed, "message": c.description}
        for name, c in found.items()
    ]


def blocking_message(found: dict[str, CheckOutcome], policy: str) -> str | None:
    """Why the sub-analysis fails under `quality: block` (each failed ERROR check named),
    or None: it may finish."""
    failed = [(name, c) for name, c in found.items() if c.severity == "ERROR" and not c.passed]
    if policy != "block" or not failed:
        return None
    named = "; ".join(f"quality check {name} failed: {c.description}" for name, c in failed)
    return f"{named} (the pipeline says quality: block; its tables stay in the results folder to be inspected)"
