"""The key columns the merge adds to every merged table, defined once.

They carry a `CPP_` infix so they never collide with a `Metadata_*` column CellProfiler
exported: JUMP LoadData CSVs carry their own `Metadata_Batch`, which is kept as
CellProfiler wrote it.

- `Metadata_CPP_Batch`: the batch folder's name (`batch_0003`).
- `Metadata_CPP_ImageKey`: batch number * 1,000,000 + ImageNumber, unique on the plate.
"""

from __future__ import annotations

BATCH_COLUMN = "Metadata_CPP_Batch"
IMAGE_KEY_COLUMN = "Metadata_CPP_ImageKey"
IMAGE_KEY_STRIDE = 1_000_000
