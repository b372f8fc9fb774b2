"""Two training engines behind one interface (base.TrainingEngine), chosen per deployment
by CPP_TRAINING_ENGINE: `embedded` (default; RDKit + crepes, no license) or `cpsign`."""
from __future__ import annotations

import os

from cpp_dagster.training.engines.base import TrainingEngine


def engine_name() -> str:
    name = os.environ.get("CPP_TRAINING_ENGINE", "embedded")
    if name not in ("embedded", "cpsign"):
        raise ValueError(f"CPP_TRAINING_ENGINE={name!r}: expected 'embedded' or 'cpsign'")
    return name


def engine_for_deployment() -> TrainingEngine:
    if engine_name() == "cpsign":
        from cpp_dagster.training.engines.cpsign import CPSignEngine

        return CPSignEngine()
    from cpp_dagster.training.engines.embedded import EmbeddedEngine

    return EmbeddedEngine()
