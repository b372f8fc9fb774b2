"""The progress line imagedb keeps in a running sub-analysis's status: batches finished
of all, and the hours left. Its bookkeeping in imagedb: tests/integration/test_imagedb.py."""

from __future__ import annotations

from cpp_dagster.imagedb.outcome import progress_message


def test_progress_message_format():
    assert progress_message(3, 4, 3 * 3600) == "3 / 4 batches finished, ~1.0 h left"
    assert progress_message(4, 4, 100) == "4 / 4 batches finished, ~0.0 h left"
    assert progress_message(0, 4, 0) == "0 / 4 batches finished, ~? h left"
