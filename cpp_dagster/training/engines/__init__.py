"""Two training engines behind one interface (base.TrainingEngine), chosen per deployment
by CPP_TRAINING_ENGINE: `embedded` (default; RDKit + crepes, no license) or `cpsign`."""

from __future__ import annotations

from cpp_dagster.service_settings import Training
from cpp_dagster.training.engines.base import TrainingEngine


def engine_for_deployment(training: Training) -> TrainingEngine:
    if training.engine == "cpsign":
        from cpp_dagster.training.engines.cpsign import CPSignEngine, CPSignSettings

        return CPSignEngine(CPSignSettings.from_settings(training))
    from cpp_dagster.training.engines.embedded import EmbeddedEngine

    return EmbeddedEngine()
