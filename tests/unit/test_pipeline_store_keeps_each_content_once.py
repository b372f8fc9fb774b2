"""The content-addressed pipeline store on real folders: a pipeline file is read only
when it is a regular file of bounded size (never through a link, never waiting on a
FIFO), each content is stored once, read-only, and a store name someone tampered with
(a planted link, other bytes, a linked store folder) is refused, not written through."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from cpp_dagster.analysis.pipeline_store import (
    PipelineFile,
    PipelineFileError,
    read_pipeline_file,
    store_pipeline_file,
)
from cpp_dagster.paths import UnsafePathError

TEXT = b"CellProfiler Pipeline: http://www.cellprofiler.org\nVersion:5\n"


def test_the_same_content_stored_twice_is_one_read_only_file_never_rewritten(tmp_path):
    pipelines = tmp_path / "pipelines"
    first, written = store_pipeline_file(pipelines, PipelineFile("a.cppipe", TEXT))
    assert written and first == pipelines / "store" / f"{hashlib.sha256(TEXT).hexdigest()}.cppipe"
    assert first.read_bytes() == TEXT and stat.S_IMODE(first.stat().st_mode) == 0o444
    before = first.stat()
    again, written_again = store_pipeline_file(pipelines, PipelineFile("renamed.cppipe", TEXT))
    assert (again, written_again) == (first, False)
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in (pipelines / "store").iterdir()) == [first.name]  # no temporary left


@pytest.mark.parametrize("inside", [False, True], ids=["to a file outside", "to a file in the store"])
def test_a_link_planted_at_a_store_name_is_refused_and_its_target_untouched(tmp_path, inside):
    pipelines = tmp_path / "pipelines"
    victim = pipelines / "store" / "victim.cppipe" if inside else tmp_path / "victim.txt"
    (pipelines / "store").mkdir(parents=True)
    victim.write_text("precious")
    pipeline = PipelineFile("a.cppipe", TEXT)
    (pipelines / "store" / f"{pipeline.sha256}.cppipe").symlink_to(victim)
    with pytest.raises((PipelineFileError, UnsafePathError)) as refused:
        store_pipeline_file(pipelines, pipeline)
    expected = ["the pipeline store is not as cpp-dagster wrote it", "is a symbolic link"] if inside else ["resolves"]
    assert all(fragment in str(refused.value) for fragment in expected), str(refused.value)
    assert victim.read_text() == "precious"


def test_a_store_file_whose_bytes_changed_is_refused_not_used(tmp_path):
    pipelines = tmp_path / "pipelines"
    path, _ = store_pipeline_file(pipelines, PipelineFile("a.cppipe", TEXT))
    path.chmod(0o644)
    path.write_bytes(TEXT + b"ExportToSpreadsheet removed by someone\n")
    with pytest.raises(PipelineFileError, match="does not hold the content its name says"):
        store_pipeline_file(pipelines, PipelineFile("a.cppipe", TEXT))


def test_a_linked_store_folder_is_refused(tmp_path):
    pipelines, elsewhere = tmp_path / "pipelines", tmp_path / "elsewhere"
    pipelines.mkdir()
    elsewhere.mkdir()
    (pipelines / "store").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError):
        store_pipeline_file(pipelines, PipelineFile("a.cppipe", TEXT))
    assert list(elsewhere.iterdir()) == []


def test_a_pipelines_folder_that_cannot_be_written_is_one_readable_refusal(tmp_path):
    not_a_folder = tmp_path / "pipelines"
    not_a_folder.write_text("a file where the pipelines folder should be")
    with pytest.raises(PipelineFileError, match="cannot write the pipeline store in .*pipelines: File exists"):
        store_pipeline_file(not_a_folder, PipelineFile("a.cppipe", TEXT))


def test_only_a_regular_file_of_bounded_size_is_read(tmp_path):
    good = tmp_path / "good.cppipe"
    good.write_bytes(TEXT)
    assert read_pipeline_file(good) == PipelineFile("good.cppipe", TEXT)

    link = tmp_path / "link.cppipe"
    link.symlink_to(good)
    with pytest.raises(PipelineFileError, match=r"link.cppipe is a symbolic link \(to .*good.cppipe\)"):
        read_pipeline_file(link)
    with pytest.raises(PipelineFileError, match="is a folder: give a .cppipe file"):
        read_pipeline_file(tmp_path)
    fifo = tmp_path / "fifo.cppipe"
    os.mkfifo(fifo)  # opened without waiting for a writer
    with pytest.raises(PipelineFileError, match="is not a regular file"):
        read_pipeline_file(fifo)
    huge = tmp_path / "huge.cppipe"
    with open(huge, "wb") as out:
        out.truncate(11 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(PipelineFileError, match="is 11.0 MB; a pipeline file may be at most 10 MB"):
        read_pipeline_file(huge)
    (tmp_path / "empty.cppipe").write_bytes(b"")
    with pytest.raises(PipelineFileError, match="is empty"):
        read_pipeline_file(tmp_path / "empty.cppipe")
    with pytest.raises(PipelineFileError, match="cannot read .*missing.cppipe: No such file"):
        read_pipeline_file(tmp_path / "missing.cppipe")
