"""SMILES -> molecules -> descriptor matrix, for the embedded engine (RDKit).

Descriptors: a Morgan count fingerprint (radius 2, 2048 bits, folded) plus ten RDKit
physico-chemical descriptors (logP, TPSA, weight, H-bond donors/acceptors, rotatable
bonds, rings, aromatic rings, heavy atoms, fraction sp3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas costs 2 s to import: only the training steps that use it load it
    import pandas as pd

FINGERPRINT_BITS = 2048
FINGERPRINT_RADIUS = 2
PHYSCHEM = (
    "MolLogP",
    "TPSA",
    "MolWt",
    "NumHDonors",
    "NumHAcceptors",
    "NumRotatableBonds",
    "RingCount",
    "NumAromaticRings",
    "HeavyAtomCount",
    "FractionCSP3",
)


@dataclass(frozen=True)
class Parsed:
    """The rows that can be trained on and, for each skipped row, why."""

    usable: pd.DataFrame  # id, smiles (canonical), label
    skipped: pd.DataFrame  # id, smiles, label, reason


def _quiet():
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")


def _missing(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def parse(frame: pd.DataFrame, task: str) -> Parsed:
    """Keep rows with a parsable structure and a label; say why the others are skipped."""
    import pandas as pd
    from rdkit import Chem

    _quiet()
    ids = frame["id"] if "id" in frame.columns else pd.Series(range(1, len(frame) + 1), index=frame.index)
    usable, skipped = [], []
    for rid, smiles, label in zip(ids, frame["smiles"], frame["label"]):
        if _missing(smiles):
            skipped.append((rid, smiles, label, "no structure"))
            continue
        mol = Chem.MolFromSmiles(str(smiles))
        if mol is None or mol.GetNumAtoms() == 0:
            skipped.append((rid, smiles, label, "unparsable SMILES"))
            continue
        if _missing(label):
            skipped.append((rid, smiles, label, "missing label"))
            continue
        if task == "regression":
            try:
                value = float(label)
            except (TypeError, ValueError):
                skipped.append((rid, smiles, label, "label is not a number"))
                continue
            if not math.isfinite(value):
                skipped.append((rid, smiles, label, "label is not a finite number"))
                continue
            label = value
        else:
            label = str(label)
        usable.append((rid, Chem.MolToSmiles(mol), label))
    return Parsed(
        usable=pd.DataFrame(usable, columns=["id", "smiles", "label"]),
        skipped=pd.DataFrame(skipped, columns=["id", "smiles", "label", "reason"]).astype(
            {"smiles": str, "label": str}
        ),
    )


def featurize(smiles: list[str]) -> np.ndarray:
    """float32 matrix, one row per SMILES (all must parse: `parse` first)."""
    from rdkit import Chem
    from rdkit.Chem import Descriptors, rdFingerprintGenerator

    _quiet()
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=FINGERPRINT_RADIUS, fpSize=FINGERPRINT_BITS)
    functions = [getattr(Descriptors, name) for name in PHYSCHEM]
    out = np.zeros((len(smiles), FINGERPRINT_BITS + len(PHYSCHEM)), dtype=np.float32)
    for row, text in enumerate(smiles):
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            raise ValueError(f"unparsable SMILES {text!r}")
        out[row, :FINGERPRINT_BITS] = generator.GetCountFingerprintAsNumPy(mol)
        out[row, FINGERPRINT_BITS:] = [f(mol) for f in functions]
    return out
