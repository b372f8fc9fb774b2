"""The work of the training assets that does not depend on the engine: ingestion (query,
parse, hold out, one parameter file per split) and the version's work folder."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cpp_dagster import paths
from cpp_dagster.service_settings import Training
from cpp_dagster.training import compounds, molecules
from cpp_dagster.training.configuration import TrainingConfig
from cpp_dagster.training.engines.base import TrainingFiles, split_params

if TYPE_CHECKING:  # pandas costs 2 s to import: loaded by the steps that run a query
    import pandas as pd

MIN_COMPOUNDS = 20
MIN_PER_CLASS = 5


class TrainingInputError(ValueError):
    """The data cannot be trained on (nothing usable, too few compounds or classes)."""


def version_folder(work_root: Path, partition_key: str) -> Path:
    """`<work>/training/<partition key>/`: the key by the path rule (a key added by hand in
    the UI may be anything)."""
    folder = paths.under(work_root / "training", partition_key, what="training partition key")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    partial = path.with_name(path.name + ".partial")
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class Ingested:
    files: TrainingFiles
    rows: int  # what the query returned
    trained_on: int
    heldout: int
    skipped: int
    skipped_reasons: dict[str, int]
    skipped_examples: list[str]  # a few "id: SMILES (reason)" for the UI

    @property
    def skipped_fraction(self) -> float:
        return self.skipped / self.rows if self.rows else 0.0


def ingest(config: TrainingConfig, folder: Path, training: Training) -> Ingested:
    """Run the configuration's query (on the deployment's databases, with its limits:
    `training`), keep the rows that can be trained on,
    hold out `test_fraction` of them (stratified for classification, seeded) and write
    one parameter file per split."""
    from sklearn.model_selection import train_test_split

    result = compounds.run_query(config.database, config.query, training)
    parsed = molecules.parse(result.frame, config.model.task)
    reasons = dict(Counter(parsed.skipped["reason"]))
    usable = parsed.usable
    if len(usable) < MIN_COMPOUNDS:
        why = ", ".join(f"{n} {reason}" for reason, n in reasons.items()) or "none skipped"
        raise TrainingInputError(
            f"only {len(usable)} of the query's {len(result.frame)} rows can be trained on "
            f"({why}); at least {MIN_COMPOUNDS} are needed"
        )
    classes: tuple[str, ...] = ()
    stratify = None
    if config.model.task == "classification":
        counts = usable["label"].value_counts()
        small = {str(k): int(v) for k, v in counts.items() if v < MIN_PER_CLASS}
        if len(counts) < 2 or small:
            raise TrainingInputError(
                f"classification needs at least 2 classes of {MIN_PER_CLASS}+ compounds; the labels are {dict(counts)}"
            )
        classes = tuple(sorted(str(c) for c in counts.index))
        stratify = usable["label"]
    train, heldout = train_test_split(
        usable, test_size=config.test_fraction, random_state=config.seed, stratify=stratify
    )
    split_files = tuple(p.write(folder / f"split_{p.index}.json") for p in split_params(config))
    files = TrainingFiles(
        folder=folder,
        train=_write_parquet(train.reset_index(drop=True), folder / "train.parquet"),
        heldout=_write_parquet(heldout.reset_index(drop=True), folder / "heldout.parquet"),
        skipped=_write_parquet(parsed.skipped, folder / "skipped.parquet"),
        splits=split_files,
        classes=classes,
    )
    examples = [f"{r.id}: {r.smiles!r} ({r.reason})" for r in parsed.skipped.head(5).itertuples()]
    return Ingested(
        files=files,
        rows=len(result.frame),
        trained_on=len(train),
        heldout=len(heldout),
        skipped=len(parsed.skipped),
        skipped_reasons=reasons,
        skipped_examples=examples,
    )
