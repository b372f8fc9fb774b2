"""Two training engines behind one interface (base.TrainingEngine), chosen per deployment
by CPP_TRAINING_ENGINE: `embedded` (default; RDKit + crepes, no license) or `cpsign`."""
from __future__ import annotations

from cpp_dagster.settings import Training, load_settings
from cpp_dagster.training.engines.base import TrainingEngine


def engine_name(training: Training | None = None) -> str:
    """The deployment's engine (checked when the settings are read)."""
    return (training or load_settings().training).engine


def engine_for_deployment(training: Training | None = None) -> TrainingEngine:
    training = training or load_settings().training
    if training.engine == "cpsign":
        from cpp_dagster.training.engines.cpsign import CPSignEngine, CPSignSettings

        return CPSignEngine(CPSignSettings.from_settings(training))
    from cpp_dagster.training.engines.embedded import EmbeddedEngine

    return EmbeddedEngine()
