"""The training configuration: one JSON document per model, as in the CPSign service flow.

    {
      "workflow": "solubility",                 # model folder, pod label: [A-Za-z0-9_.-], 1-60
      "database": "compounds",                  # a named compound database (see compounds.py)
      "query": "SELECT smiles, solubility AS label FROM compounds",
      "splits": 4,                              # parallel training jobs (one op/pod each)
      "model": {
        "predictor": "ACP_Regression",          # or ACP_Classification
        "nr_models": 8,                         # aggregated conformal predictors in all
        "ncm": "AbsDiff",                       # regression: AbsDiff | Normalized;
                                                # classification: InverseProbability | Margin
        "scorer": "RandomForest",               # RandomForest | LinearSVR | LinearSVC
        "significance": 0.2,                    # 1 - confidence of the published predictions
        "calibration_ratio": 0.2                # share of each model's data kept to calibrate
      },
      "test_fraction": 0.2,                     # held out for the validity/efficiency checks
      "seed": 42,
      "max_skipped_fraction": 0.05,             # unparsable SMILES / missing labels tolerated
      "validity_tolerance": 0.05                # coverage may fall this far below 1 - significance
    }

The query must be exactly one SQL statement that only reads (`query.checked`: PostgreSQL's
own grammar) and return a `smiles` and a `label` column (an `id` column is kept if
present); it runs read-only, with a statement timeout and caps on rows and bytes
(`compounds.run_query`).

A version is content-addressed: the SHA-256 of the configuration normalised (defaults
filled in, keys sorted, no whitespace). Re-adding the same file, or the same content
formatted differently or with a default spelled out, is not a new version.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from cpp_dagster import labels, paths

PREDICTORS = {"ACP_Regression": "regression", "ACP_Classification": "classification"}
NCMS = {"regression": ("AbsDiff", "Normalized"), "classification": ("InverseProbability", "Margin")}
SCORERS = {"regression": ("RandomForest", "LinearSVR"), "classification": ("RandomForest", "LinearSVC")}
WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,60}$")


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class ModelParams:
    predictor: str
    nr_models: int
    ncm: str
    scorer: str
    significance: float
    calibration_ratio: float

    @property
    def task(self) -> str:
        return PREDICTORS[self.predictor]


@dataclass(frozen=True)
class TrainingConfig:
    workflow: str
    database: str
    query: str
    splits: int
    model: ModelParams
    test_fraction: float
    seed: int
    max_skipped_fraction: float
    validity_tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def version(self) -> str:
        """The content address: SHA-256 of the normalised configuration."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def partition_key(self) -> str:
        """The Dagster partition of this version: `<workflow>-<first 12 hex of the version>`."""
        return f"{self.workflow}-{self.version[:12]}"


_TOP = {
    "workflow",
    "database",
    "query",
    "splits",
    "model",
    "test_fraction",
    "seed",
    "max_skipped_fraction",
    "validity_tolerance",
}
_MODEL = {"predictor", "nr_models", "ncm", "scorer", "significance", "calibration_ratio"}


def _number(problems: list[str], where: str, value: Any, low: float, high: float, *, integer: bool = False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        problems.append(f"{where} must be {'an integer' if integer else 'a number'}, got {value!r}")
        return None
    if not low <= value <= high:
        problems.append(f"{where} must be between {low} and {high}, got {value!r}")
        return None
    return value


def _choice(problems: list[str], where: str, value: Any, allowed) -> Any:
    if value not in allowed:
        problems.append(f"{where} must be one of {', '.join(allowed)}; got {value!r}")
        return None
    return value


def _workflow_problems(workflow: Any) -> list[str]:
    """The workflow names the model's folder in the registry (the path rule) and is a pod
    label (labels.py)."""
    rule = (
        "workflow must be 1-60 characters of letters, digits, '_', '.', '-', starting and ending with a "
        "letter or digit (it names the model's folder and is a pod label)"
    )
    try:
        paths.component(workflow, "workflow")
    except paths.UnsafePathError as e:
        return [f"{rule}: {e}"]
    if not (isinstance(workflow, str) and WORKFLOW_NAME.match(workflow) and labels.is_label_value(workflow)):
        return [f"{rule}; got {workflow!r}"]
    return []


def from_dict(raw: Any) -> TrainingConfig:
    """Validate and normalise; ConfigError lists every problem found, not only the first."""
    if not isinstance(raw, dict):
        raise ConfigError("a training configuration is a JSON object")
    problems: list[str] = [f"unknown key {k!r}" for k in sorted(set(raw) - _TOP)]
    for key in ("workflow", "database", "query", "splits", "model"):
        if key not in raw:
            problems.append(f"missing required key {key!r}")
    workflow = raw.get("workflow")
    if "workflow" in raw:
        problems += _workflow_problems(workflow)
    for key in ("database", "query"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            problems.append(f"{key} must be a non-empty string")
    if isinstance(raw.get("query"), str) and raw["query"].strip():
        from cpp_dagster.training.query import QueryRefused, checked

        try:
            checked(raw["query"])
        except QueryRefused as error:
            problems.append(str(error))
    splits = _number(problems, "splits", raw.get("splits", 1), 1, 64, integer=True)

    model = raw.get("model", {})
    if not isinstance(model, dict):
        problems.append("model must be an object")
        model = {}
    problems += [f"unknown key 'model.{k}'" for k in sorted(set(model) - _MODEL)]
    predictor = _choice(problems, "model.predictor", model.get("predictor"), tuple(PREDICTORS))
    task = PREDICTORS.get(predictor or "", "regression")
    nr_models = _number(problems, "model.nr_models", model.get("nr_models", 10), 1, 1000, integer=True)
    ncm = _choice(problems, "model.ncm", model.get("ncm", NCMS[task][0]), NCMS[task])
    scorer = _choice(problems, "model.scorer", model.get("scorer", "RandomForest"), SCORERS[task])
    significance = _number(problems, "model.significance", model.get("significance", 0.2), 0.01, 0.5)
    calibration_ratio = _number(problems, "model.calibration_ratio", model.get("calibration_ratio", 0.2), 0.05, 0.5)
    if splits and nr_models and splits > nr_models:
        problems.append(
            f"splits ({splits}) cannot exceed model.nr_models ({nr_models}): each split trains "
            "at least one of the aggregated models"
        )
    test_fraction = _number(problems, "test_fraction", raw.get("test_fraction", 0.2), 0.05, 0.5)
    seed = _number(problems, "seed", raw.get("seed", 42), 0, 2**31 - 1, integer=True)
    max_skipped = _number(problems, "max_skipped_fraction", raw.get("max_skipped_fraction", 0.05), 0.0, 1.0)
    tolerance = _number(problems, "validity_tolerance", raw.get("validity_tolerance", 0.05), 0.0, 0.5)
    if problems:
        raise ConfigError("invalid training configuration: " + "; ".join(problems))
    return TrainingConfig(
        workflow=workflow,
        database=raw["database"].strip(),
        query=raw["query"].strip(),
        splits=splits,
        model=ModelParams(
            predictor=predictor,
            nr_models=nr_models,
            ncm=ncm,
            scorer=scorer,
            significance=float(significance),
            calibration_ratio=float(calibration_ratio),
        ),
        test_fraction=float(test_fraction),
        seed=seed,
        max_skipped_fraction=float(max_skipped),
        validity_tolerance=float(tolerance),
    )


def parse(text: str, source: str = "the configuration") -> TrainingConfig:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{source} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    try:
        return from_dict(raw)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
