"""The embedded engine: RDKit descriptors and aggregated conformal predictors built with
crepes over scikit-learn models. Needs no license; `make test` and the demo use it.

The configuration's model keys map onto it as follows:

| key               | here                                                                  |
|-------------------|-----------------------------------------------------------------------|
| predictor         | ACP_Regression -> crepes WrapRegressor; ACP_Classification -> WrapClassifier |
| nr_models         | number of inductive conformal predictors (ICPs) aggregated            |
| calibration_ratio | share of the training set drawn (per ICP, seeded) to calibrate it     |
| scorer            | RandomForest (100 trees) / LinearSVR / LinearSVC (standardised input;  |
|                   | LinearSVC Platt-scaled, as crepes scores classes by probability)      |
| ncm               | AbsDiff: |y - y_hat|; Normalized: scaled by crepes' k-NN DifficultyEstimator; |
|                   | InverseProbability: crepes' hinge (1 - p_y); Margin: crepes' margin   |
| significance      | intervals / prediction sets at confidence 1 - significance            |

Aggregation (the ACP of Carlsson et al. 2014): the interval bounds of the ICPs are
combined by their median; for classification, each class's p-value is the mean over
the ICPs and the prediction set holds the classes with p-value > significance.
Smoothed p-values break ties at random: the seed is fixed, so a model predicts the same
every time (a re-run of a version reproduces its model and its checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from cpp_dagster.training import molecules
from cpp_dagster.training.configuration import ModelParams, TrainingConfig
from cpp_dagster.training.engines.base import Evaluation, SplitParams, TrainingFiles


def _learner(params: ModelParams, seed: int):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC, LinearSVR

    if params.scorer == "RandomForest":
        cls = RandomForestRegressor if params.task == "regression" else RandomForestClassifier
        return cls(n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1)
    if params.scorer == "LinearSVR":
        # the primal solvers: the dual ones take minutes on ~2,000 descriptor columns
        return make_pipeline(
            StandardScaler(),
            LinearSVR(loss="squared_epsilon_insensitive", dual=False, C=0.01, random_state=seed, max_iter=5000),
        )
    # crepes scores classes by probability: Platt scaling gives the SVM one
    return make_pipeline(
        StandardScaler(), CalibratedClassifierCV(LinearSVC(dual=False, C=0.01, random_state=seed, max_iter=5000), cv=3)
    )


@dataclass
class ConformalModel:
    """An aggregated conformal predictor over molecules: what is published and loaded back."""

    task: str
    significance: float
    icps: list = field(default_factory=list)  # calibrated crepes WrapRegressor / WrapClassifier
    classes: tuple[str, ...] = ()
    workflow: str = ""
    version: str = ""

    def predict_features(self, X: np.ndarray, significance: float | None = None) -> pd.DataFrame:
        significance = self.significance if significance is None else significance
        if self.task == "regression":
            bounds = np.stack([icp.predict_int(X, confidence=1 - significance, seed=0) for icp in self.icps])
            points = np.stack([icp.predict(X) for icp in self.icps])
            return pd.DataFrame(
                {
                    "prediction": np.median(points, axis=0),
                    "lower": np.median(bounds[:, :, 0], axis=0),
                    "upper": np.median(bounds[:, :, 1], axis=0),
                }
            )
        p_values = np.mean(np.stack([icp.predict_p(X, seed=0) for icp in self.icps]), axis=0)
        frame = pd.DataFrame(p_values, columns=[f"p_{c}" for c in self.classes])
        frame["prediction_set"] = [[c for c, p in zip(self.classes, row) if p > significance] for row in p_values]
        return frame

    def predict(self, smiles: list[str], significance: float | None = None) -> pd.DataFrame:
        """Predictions for SMILES strings: interval (regression) or p-values and set."""
        parsed = molecules.parse(pd.DataFrame({"smiles": smiles, "label": "?"}), "classification")
        if len(parsed.skipped):
            raise ValueError(f"unparsable SMILES: {list(parsed.skipped['smiles'])}")
        out = self.predict_features(molecules.featurize(list(parsed.usable["smiles"])), significance)
        out.insert(0, "smiles", smiles)
        return out


def load_model(path: str | Path) -> ConformalModel:
    model = joblib.load(path)
    if not isinstance(model, ConformalModel):
        raise TypeError(f"{path} does not hold a ConformalModel")
    return model


class EmbeddedEngine:
    name = "embedded"
    model_suffix = ".joblib"

    def precompute(self, config: TrainingConfig, files: TrainingFiles, out_dir: Path) -> Path:
        train = pd.read_parquet(files.train)
        heldout = pd.read_parquet(files.heldout)
        out = out_dir / "descriptors.npz"
        label_type = float if config.model.task == "regression" else str
        np.savez(
            out,
            train=molecules.featurize(list(train["smiles"])),
            heldout=molecules.featurize(list(heldout["smiles"])),
            train_labels=train["label"].to_numpy(dtype=label_type),
            heldout_labels=heldout["label"].to_numpy(dtype=label_type),
            classes=np.array(files.classes, dtype=str),
        )
        return out

    def train_split(self, config: TrainingConfig, descriptors: Path, split: SplitParams, out_dir: Path) -> Path:
        from crepes import WrapClassifier, WrapRegressor
        from crepes.extras import DifficultyEstimator, hinge, margin
        from sklearn.model_selection import train_test_split

        params = config.model
        with np.load(descriptors) as data:
            X, y = data["train"], data["train_labels"]
        icps = []
        for model_index in split.models:
            seed = split.seed + model_index
            stratify = y if params.task == "classification" else None
            X_prop, X_cal, y_prop, y_cal = train_test_split(
                X, y, test_size=params.calibration_ratio, random_state=seed, stratify=stratify
            )
            if params.task == "regression":
                icp = WrapRegressor(_learner(params, seed))
                icp.fit(X_prop, y_prop.astype(float))
                # Normalized: residuals scaled by a k-NN difficulty estimate, which crepes
                # keeps with the ICP and applies again at prediction time.
                de = (
                    DifficultyEstimator().fit(X=X_prop, y=y_prop.astype(float), scaler=True)
                    if params.ncm == "Normalized"
                    else None
                )
                icp.calibrate(X_cal, y_cal.astype(float), de=de)
            else:
                icp = WrapClassifier(_learner(params, seed))
                icp.fit(X_prop, y_prop)
                icp.calibrate(X_cal, y_cal, nc=hinge if params.ncm == "InverseProbability" else margin)
            icps.append(icp)
        out = out_dir / f"split_{split.index}{self.model_suffix}"
        joblib.dump({"split": split.index, "models": split.models, "icps": icps}, out)
        return out

    def aggregate(self, config: TrainingConfig, split_models: list[Path], out_dir: Path) -> Path:
        parts = sorted((joblib.load(p) for p in split_models), key=lambda part: part["split"])
        trained = sorted(m for part in parts for m in part["models"])
        if trained != list(range(config.model.nr_models)):
            raise ValueError(f"the split models hold models {trained}, expected 0..{config.model.nr_models - 1}")
        classes = ()
        if config.model.task == "classification":
            classes = tuple(str(c) for c in parts[0]["icps"][0].learner.classes_)
        model = ConformalModel(
            task=config.model.task,
            significance=config.model.significance,
            icps=[icp for part in parts for icp in part["icps"]],
            classes=classes,
            workflow=config.workflow,
            version=config.version,
        )
        out = out_dir / f"model{self.model_suffix}"
        joblib.dump(model, out)
        return out

    def evaluate(self, config: TrainingConfig, model: Path, files: TrainingFiles, out_dir: Path) -> Evaluation:
        predictor = load_model(model)
        with np.load(files.folder / "descriptors.npz") as data:
            X, y = data["heldout"], data["heldout_labels"]
        frame = predictor.predict_features(X)
        if predictor.task == "regression":
            y = y.astype(float)
            width = (frame["upper"] - frame["lower"]).to_numpy()
            finite = np.isfinite(width)
            residual = y - frame["prediction"].to_numpy()
            ss_tot = float(np.sum((y - y.mean()) ** 2))
            return Evaluation(
                compounds=len(y),
                significance=predictor.significance,
                coverage=float(np.mean((frame["lower"] <= y) & (y <= frame["upper"]))),
                efficiency=float(np.median(width)),
                efficiency_name="median interval width",
                infinite_intervals=int((~finite).sum()),
                point_metrics={
                    "rmse": float(np.sqrt(np.mean(residual**2))),
                    "r2": 1 - float(np.sum(residual**2)) / ss_tot if ss_tot else float("nan"),
                },
            )
        sets = frame["prediction_set"]
        best = frame[[f"p_{c}" for c in predictor.classes]].to_numpy().argmax(axis=1)
        return Evaluation(
            compounds=len(y),
            significance=predictor.significance,
            coverage=float(np.mean([str(label) in s for label, s in zip(y, sets)])),
            efficiency=float(np.mean([len(s) for s in sets])),
            efficiency_name="mean prediction-set size",
            infinite_intervals=0,
            point_metrics={
                "accuracy": float(np.mean(np.array(predictor.classes)[best] == y.astype(str))),
                "empty_sets": int(sum(len(s) == 0 for s in sets)),
            },
        )
