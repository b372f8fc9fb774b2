"""The merge never follows a symbolic link out of the results folder, whoever planted it
(every analysis pod and NAS user can write to the work area and the results folders):
a linked versions folder, a results link pointing elsewhere, a batch output linking to
/proc/self/environ. And a re-merge removes only the files the project wrote: a user's
`my_plot.partial` survives. The real merge code on real folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from batch_outputs import two_batches

from cpp_dagster.features.merge import MergeError, merge_batches
from cpp_dagster.features.results_folder import UnsafeResultsFolder, versions_dir


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_linked_versions_folder_is_refused_and_nothing_outside_changes(tmp_path):
    batches = two_batches(tmp_path)
    dest = tmp_path / "results" / "P1" / "1" / "7"
    outside = tmp_path / "elsewhere"
    (outside / "v-precious").mkdir(parents=True)
    (outside / "v-precious" / "data.txt").write_text("keep me")
    (outside / "trash-old").mkdir()
    dest.parent.mkdir(parents=True)
    versions_dir(dest).symlink_to(outside)
    with pytest.raises(UnsafeResultsFolder, match=r"\.7\.versions is a symbolic link to .*elsewhere, not a folder"):
        merge_batches(batches, dest)
    assert tree(outside) == ["trash-old", "v-precious", "v-precious/data.txt"]
    assert not dest.exists()


def test_a_results_link_pointing_elsewhere_is_refused_and_nothing_is_carried_over(tmp_path):
    batches = two_batches(tmp_path)
    dest = tmp_path / "results" / "P1" / "1" / "7"
    merge_batches(batches, dest)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "password.txt").write_text("hunter2")
    link = dest.parent / ".planted"
    link.symlink_to(secrets)
    os.replace(link, dest)  # the results folder now points outside its versions
    with pytest.raises(UnsafeResultsFolder, match="not to one of its versions"):
        merge_batches(batches, dest)
    assert not any("password" in name for name in tree(versions_dir(dest)))
    assert (secrets / "password.txt").read_text() == "hunter2"


@pytest.mark.parametrize("target", ["/proc/self/environ", "../../secrets.txt"])
def test_a_batch_output_that_is_a_link_is_never_merged(tmp_path, target):
    batches = two_batches(tmp_path)
    (tmp_path / "secrets.txt").write_text("CPP_IMAGEDB_URL=postgresql://cpp:hunter2@db/imagedb")
    (batches[0] / "qc_plot.png").symlink_to(target)
    dest = tmp_path / "results" / "P1" / "1" / "7"
    with pytest.raises(MergeError, match=f"qc_plot.png is a symbolic link to {target}.*only regular files are merged"):
        merge_batches(batches, dest)
    assert not dest.exists()
    assert all("staging" not in name for name in tree(versions_dir(dest)))


def test_a_batch_table_that_is_a_link_is_never_read(tmp_path):
    batches = two_batches(tmp_path)
    (tmp_path / "environ.csv").write_text("CPP_IMAGEDB_URL\npostgresql://cpp:hunter2@db/imagedb\n")
    (batches[1] / "MyExpt_Secrets.csv").symlink_to(tmp_path / "environ.csv")
    with pytest.raises(MergeError, match="MyExpt_Secrets.csv is a symbolic link"):
        merge_batches(batches, tmp_path / "results" / "7")


def test_a_users_files_survive_a_re_merge_and_the_projects_temporaries_do_not(tmp_path):
    batches = two_batches(tmp_path)
    dest = tmp_path / "results" / "7"
    merge_batches(batches, dest)
    (dest / "my_plot.partial").write_text("a user's plot")
    (dest / "notes.tmp").write_text("a user's notes")
    (dest / f".single_cell.parquet.{'a' * 32}.partial").write_text("a killed derived table")
    (dest / "link_to_etc").symlink_to("/etc")
    merge_batches(batches, dest)
    assert (dest / "my_plot.partial").read_text() == "a user's plot"
    assert (dest / "notes.tmp").read_text() == "a user's notes"
    assert not (dest / f".single_cell.parquet.{'a' * 32}.partial").exists()
    assert not (dest / "link_to_etc").exists()  # a link is never carried into a new version
    assert (dest / "Image.parquet").is_file()
