"""The CPSign engine: the precompute, train, aggregate and predict steps call the CPSign
CLI, as the lab's Pachyderm pipelines did. Configured per deployment by CPP_CPSIGN_COMMAND,
CPP_CPSIGN_LICENSE and CPP_CPSIGN_DESCRIPTORS (`Settings.training`, the README's
configuration table).

On Kubernetes the steps run in the image named in the pod settings' `training.cpsign_image`
(the project plus Java and the CPSign jar), with the license Secret mounted read-only
(k8s/pod_config.py). The command lines follow CPSign 2's CLI (programs precompute,
train, aggregate, predict); they are checked in the tests but were not run here: the jar
is not installed on the machines the tests run on.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cpp_dagster.service_settings import Training
from cpp_dagster.training.configuration import ConfigError, TrainingConfig
from cpp_dagster.training.engines.base import Evaluation, SplitParams, TrainingFiles

SCORERS = {"LinearSVR": "LinearSVR", "LinearSVC": "LinearSVC"}
NCMS = {
    "AbsDiff": "AbsDiff",
    "Normalized": "Normalized",
    "InverseProbability": "InverseProbability",
    "Margin": "Margin",
}


class CPSignError(RuntimeError):
    """A CPSign command failed; the message holds its exit code and the end of its output."""


@dataclass(frozen=True)
class CPSignSettings:
    command: tuple[str, ...] = ("java", "-jar", "/opt/cpsign/cpsign.jar")
    license: str | None = None
    descriptors: str = "signatures:1:3"

    @classmethod
    def from_settings(cls, training: Training) -> CPSignSettings:
        return cls(
            command=training.cpsign_command, license=training.cpsign_license, descriptors=training.cpsign_descriptors
        )


def _license(settings: CPSignSettings) -> list[str]:
    return ["--license", settings.license] if settings.license else []


def _checked(config: TrainingConfig) -> None:
    if config.model.scorer not in SCORERS:
        raise ConfigError(
            f"model.scorer {config.model.scorer!r} is not available with the CPSign engine (use {' or '.join(SCORERS)})"
        )


def precompute_command(
    settings: CPSignSettings, config: TrainingConfig, train_csv: Path, classes: tuple[str, ...], out: Path
) -> list[str]:
    labels = ["--labels", *classes] if config.model.task == "classification" else []
    return [
        *settings.command,
        "precompute",
        *_license(settings),
        "--model-type",
        config.model.task,
        "--train-data",
        "CSV",
        str(train_csv),
        "--property",
        "label",
        *labels,
        "--descriptors",
        settings.descriptors,
        "--model-name",
        config.workflow,
        "--model-out",
        str(out),
    ]


def train_command(
    settings: CPSignSettings, config: TrainingConfig, precomputed: Path, split: SplitParams, out: Path
) -> list[str]:
    m = config.model
    # CPSign numbers the aggregated models (its "splits") from 1.
    return [
        *settings.command,
        "train",
        *_license(settings),
        "--data-set",
        str(precomputed),
        "--predictor-type",
        f"acp-{m.task}",
        "--sampling-strategy",
        f"random:numSamples={m.nr_models}:calibRatio={m.calibration_ratio}",
        "--splits",
        ",".join(str(i + 1) for i in split.models),
        "--scorer",
        SCORERS[m.scorer],
        "--ncm",
        NCMS[m.ncm],
        "--seed",
        str(split.seed),
        "--model-name",
        config.workflow,
        "--model-out",
        str(out),
    ]


def aggregate_command(settings: CPSignSettings, split_models: list[Path], out: Path) -> list[str]:
    return [
        *settings.command,
        "aggregate",
        *_license(settings),
        "--model-files",
        *map(str, split_models),
        "--model-out",
        str(out),
    ]


def predict_command(
    settings: CPSignSettings, config: TrainingConfig, model: Path, predict_csv: Path, out: Path
) -> list[str]:
    return [
        *settings.command,
        "predict",
        *_license(settings),
        "--model",
        str(model),
        "--predict-file",
        "CSV",
        str(predict_csv),
        "--confidences",
        str(round(1 - config.model.significance, 6)),
        "--output-format",
        "CSV",
        "--output",
        str(out),
    ]


def run(command: list[str], log: Path, timeout_s: float = 6 * 3600) -> None:
    """Run one CPSign command; its output goes to `log`. Non-zero exit -> CPSignError."""
    with open(log, "wb") as out:
        try:
            proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
        except FileNotFoundError:
            raise CPSignError(f"cannot start CPSign: {command[0]!r} not found (set CPP_CPSIGN_COMMAND)") from None
        except subprocess.TimeoutExpired:
            raise CPSignError(f"CPSign {command[len(command) - 1]} timed out after {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise CPSignError(f"CPSign exited with code {proc.returncode}: {shlex.join(command)}\n{tail}")


class CPSignEngine:
    name = "cpsign"
    model_suffix = ".jar"

    def __init__(self, settings: CPSignSettings, runner=run):
        self.settings = settings
        self.run = runner

    def precompute(self, config: TrainingConfig, files: TrainingFiles, out_dir: Path) -> Path:
        _checked(config)
        train_csv = out_dir / "train.csv"
        pd.read_parquet(files.train).to_csv(train_csv, index=False)
        out = out_dir / "precomputed.jar"
        self.run(precompute_command(self.settings, config, train_csv, files.classes, out), out_dir / "precompute.log")
        return out

    def train_split(self, config: TrainingConfig, descriptors: Path, split: SplitParams, out_dir: Path) -> Path:
        _checked(config)
        out = out_dir / f"split_{split.index}{self.model_suffix}"
        self.run(
            train_command(self.settings, config, descriptors, split, out), out_dir / f"train_split_{split.index}.log"
        )
        return out

    def aggregate(self, config: TrainingConfig, split_models: list[Path], out_dir: Path) -> Path:
        out = out_dir / f"model{self.model_suffix}"
        self.run(aggregate_command(self.settings, split_models, out), out_dir / "aggregate.log")
        return out

    def evaluate(self, config: TrainingConfig, model: Path, files: TrainingFiles, out_dir: Path) -> Evaluation:
        heldout = pd.read_parquet(files.heldout)
        predict_csv, out = out_dir / "heldout.csv", out_dir / "heldout_predictions.csv"
        heldout.to_csv(predict_csv, index=False)
        self.run(predict_command(self.settings, config, model, predict_csv, out), out_dir / "predict.log")
        return evaluation_from_predictions(config, pd.read_csv(out), heldout["label"].to_numpy())


def evaluation_from_predictions(config: TrainingConfig, predictions: pd.DataFrame, labels: np.ndarray) -> Evaluation:
    """Coverage and efficiency from CPSign's prediction CSV (interval bounds for
    regression, one p-value column per class for classification)."""
    columns = {c.lower(): c for c in predictions.columns}
    significance = config.model.significance
    if config.model.task == "regression":
        lower = next((columns[c] for c in columns if "lower" in c), None)
        upper = next((columns[c] for c in columns if "upper" in c), None)
        if lower is None or upper is None:
            raise CPSignError(f"CPSign's predictions hold no interval columns: {list(predictions.columns)}")
        lo, hi, y = predictions[lower].to_numpy(float), predictions[upper].to_numpy(float), labels.astype(float)
        width = hi - lo
        return Evaluation(
            compounds=len(y),
            significance=significance,
            coverage=float(np.mean((lo <= y) & (y <= hi))),
            efficiency=float(np.median(width)),
            efficiency_name="median interval width",
            infinite_intervals=int((~np.isfinite(width)).sum()),
            point_metrics={},
        )
    p_columns = {c: columns[c] for c in columns if c.startswith("p-value")}
    if not p_columns:
        raise CPSignError(f"CPSign's predictions hold no p-value columns: {list(predictions.columns)}")
    classes = [c.split("[", 1)[-1].rstrip("]").strip() if "[" in c else c for c in p_columns.values()]
    p = predictions[list(p_columns.values())].to_numpy(float)
    sets = [[cls for cls, value in zip(classes, row) if value > significance] for row in p]
    return Evaluation(
        compounds=len(labels),
        significance=significance,
        coverage=float(np.mean([str(y) in s for y, s in zip(labels, sets)])),
        efficiency=float(np.mean([len(s) for s in sets])),
        efficiency_name="mean prediction-set size",
        infinite_intervals=0,
        point_metrics={},
    )
