"""Submitting a variant of the demo analysis to imagedb, as the lab would with a pipeline
of its own."""

from __future__ import annotations

import uuid

from cpp_dagster.demo.register import demo_pipeline_meta


def submit(lab, acq: int, batch_size: int = 2, **sub_meta) -> int:
    """One analysis of plate acquisition `acq` with the demo pipeline's sub-analysis, its
    meta updated with `sub_meta`, under a pipeline name of its own; its sub-analysis id."""
    meta = demo_pipeline_meta(batch_size=batch_size)
    meta["sub_analyses"][0].update(sub_meta)
    name = f"custom-{uuid.uuid4().hex[:6]}"
    lab.db.put_pipeline(name, meta)
    return lab.db.submit_analysis(acq, name).sub_ids[0]
