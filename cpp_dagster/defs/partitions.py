"""One partition per sub-analysis: `acq<plate acquisition>_an<analysis>_sub<sub-analysis>`."""
from __future__ import annotations

import re

import dagster as dg

sub_analysis_partitions = dg.DynamicPartitionsDefinition(name="sub_analysis")

_KEY = re.compile(r"^acq(\d+)_an(\d+)_sub(\d+)$")


def partition_key(plate_acquisition_id: int, analysis_id: int, sub_id: int) -> str:
    return f"acq{plate_acquisition_id}_an{analysis_id}_sub{sub_id}"


def sub_id_of(key: str | None) -> int | None:
    """The sub-analysis of a partition key; None for a key that is not one of ours."""
    m = _KEY.match(key or "")
    return int(m.group(3)) if m else None
