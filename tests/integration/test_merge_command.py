"""`cpp-dagster merge` in a process of its own: the merged tables on stdout, and a broken
batch table or a missing folder as one readable line with exit code 2. The merge
itself: tests/unit/test_merge.py and tests/unit/test_merge_never_breaks_a_reader.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from batch_outputs import two_batches


def merge_cli(src: Path, dest: Path) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("cpp-dagster")
    return subprocess.run([str(cli), "merge", str(src), str(dest)], capture_output=True, text=True, timeout=120)


def test_the_merge_command_prints_one_readable_line_and_exits_2(tmp_path):
    dirs = two_batches(tmp_path)
    ok = merge_cli(tmp_path / "src", tmp_path / "dest")
    assert ok.returncode == 0, ok.stderr
    assert '"Cells"' in ok.stdout

    (dirs[0] / "MyExpt_Cells.csv").write_bytes(b"")
    broken = merge_cli(tmp_path / "src", tmp_path / "dest2")
    assert broken.returncode == 2
    assert broken.stdout == "" and "Traceback" not in broken.stderr
    assert broken.stderr.count("\n") == 1
    assert broken.stderr.startswith("cpp-dagster merge: batch batch_0001: its Cells table ")
    assert "MyExpt_Cells.csv is empty (0 bytes" in broken.stderr

    missing = merge_cli(tmp_path / "no-such-folder", tmp_path / "dest3")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert "no-such-folder is not a folder of batch folders" in missing.stderr
