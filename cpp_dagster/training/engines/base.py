"""The interface both engines implement, and the files that pass between the steps.

Every step reads and writes files in the version's work folder on the shared work area
(under the Kubernetes executor each step is its own pod): ingestion writes the training
set, the held-out set and one parameter file per split; the engine then precomputes
descriptors, trains each split, aggregates the split models and evaluates the result.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from cpp_dagster.training.configuration import TrainingConfig


@dataclass(frozen=True)
class SplitParams:
    """One split's share of the aggregated predictor: which of the `nr_models` models it
    trains (model i goes to split i % splits) and with which seeds."""

    index: int
    splits: int
    models: tuple[int, ...]
    seed: int

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def read(cls, path: Path) -> SplitParams:
        raw = json.loads(Path(path).read_text())
        return cls(index=raw["index"], splits=raw["splits"], models=tuple(raw["models"]), seed=raw["seed"])


def split_params(config: TrainingConfig) -> list[SplitParams]:
    n = config.model.nr_models
    return [
        SplitParams(index=s, splits=config.splits, models=tuple(range(s, n, config.splits)), seed=config.seed)
        for s in range(config.splits)
    ]


@dataclass(frozen=True)
class TrainingFiles:
    """What `training_data` wrote for one version."""

    folder: Path
    train: Path  # parquet: id, smiles, label
    heldout: Path  # parquet: id, smiles, label (never trained on)
    skipped: Path  # parquet: id, smiles, label, reason
    splits: tuple[Path, ...]  # one SplitParams JSON per split
    classes: tuple[str, ...] = ()  # classification: every label, in a fixed order


@dataclass(frozen=True)
class Evaluation:
    """The aggregated model on the held-out set, at the configured significance."""

    compounds: int
    significance: float
    coverage: float  # share of held-out compounds whose true label is in the prediction
    efficiency: float  # regression: median interval width; classification: mean set size
    efficiency_name: str
    infinite_intervals: int  # regression: intervals the calibration set was too small to bound
    point_metrics: dict


class TrainingEngine(Protocol):
    name: str
    model_suffix: str

    def precompute(self, config: TrainingConfig, files: TrainingFiles, out_dir: Path) -> Path: ...

    def train_split(self, config: TrainingConfig, descriptors: Path, split: SplitParams, out_dir: Path) -> Path: ...

    def aggregate(self, config: TrainingConfig, split_models: list[Path], out_dir: Path) -> Path: ...

    def evaluate(self, config: TrainingConfig, model: Path, files: TrainingFiles, out_dir: Path) -> Evaluation: ...
