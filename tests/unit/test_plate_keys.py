"""The plate keys of the UI's partitions: readable barcodes, stable when acquisitions are
added. Looking a key up in imagedb: tests/integration/test_ui_partitions_are_submissions.py."""

from __future__ import annotations

from cpp_dagster.defs.analysis.partitions import plate_keys


def test_plate_keys_are_barcodes_readable_and_stable():
    keys = plate_keys({1: "P-1", 2: "P-2", 3: "P-1", 4: "bad|bar,code", 5: ""})
    assert keys == {1: "P-1", 2: "P-2", 3: "P-1~3", 4: "~4", 5: "~5"}
    # a later acquisition never changes an earlier key
    assert plate_keys({1: "P-1", 2: "P-2", 3: "P-1", 4: "bad|bar,code", 5: "", 6: "P-1"})[3] == "P-1~3"
