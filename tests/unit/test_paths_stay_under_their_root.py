"""Every value that names a file or folder (pipeline file, model name and version,
training workflow, partition key) is refused when it is `..`, holds a `/`, is an
absolute path or holds a NUL byte: with a message naming the value, and nothing created
outside the NAS root (checked on the filesystem, before and after). Plate barcodes and
pipeline files in imagedb, through the real sensor and job:
tests/integration/test_paths_stay_under_their_root_through_imagedb_and_the_job.py."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from escaping_values import KINDS, WHY, bad_value, outside_nas

from cpp_dagster import paths
from cpp_dagster.analysis.planning import PlanningError, SubAnalysisOptions
from cpp_dagster.defs.resources import WorkAreaIOManager
from cpp_dagster.training import configuration, steps
from cpp_dagster.training.configuration import ConfigError
from cpp_dagster.training.registry import FolderModelRegistry, RegistryError

# --- pipeline file ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_pipeline_file_value_of_each_kind_is_a_planning_error(kind, tmp_path):
    value = (
        "x/" + bad_value(kind, tmp_path, "escaped.cppipe")
        if kind == "slash"
        else bad_value(kind, tmp_path, "escaped.cppipe")
    )
    if kind == "slash":  # a subfolder of the pipelines folder is allowed: `a/b.cppipe`
        assert SubAnalysisOptions.from_meta({"pipeline_file": value}).pipeline_file == value
        return
    with pytest.raises(PlanningError, match="pipeline_file") as refused:
        SubAnalysisOptions.from_meta({"pipeline_file": value})
    assert "inside the pipelines folder" in str(refused.value)


# --- model name, version and training workflow ---------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", ["name", "version"])
def test_a_model_name_or_version_that_would_leave_models_is_refused(settings, tmp_path, kind, field):
    models = settings.nas_root / "models"
    sibling = settings.nas_root / "pipelines"  # `..` / `pipelines` once replaced a sibling of models/
    sibling.mkdir(parents=True)
    (sibling / "keep.cppipe").write_text("kept")
    model = settings.nas_root / "model.bin"
    model.write_bytes(b"model")
    value = ".." if kind == "dotdot" else bad_value(kind, tmp_path)
    name, version = (value, "pipelines") if field == "name" else ("solubility", value)
    before, inside = outside_nas(settings.nas_root), set(settings.nas_root.rglob("*"))
    with pytest.raises(RegistryError, match=f"model {field}") as refused:
        FolderModelRegistry(models).publish(name, version, model, {"a": 1})
    assert WHY[kind].split("|")[0] in str(refused.value) or kind == "dotdot"
    assert outside_nas(settings.nas_root) == before
    assert set(settings.nas_root.rglob("*")) == inside  # nothing created, renamed or deleted
    assert (sibling / "keep.cppipe").read_text() == "kept"


def test_a_model_folder_symlinked_out_of_the_registry_is_refused(settings, tmp_path):
    models = settings.nas_root / "models"
    models.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (models / "linked").symlink_to(tmp_path / "elsewhere")
    model = settings.nas_root / "model.bin"
    model.write_bytes(b"model")
    with pytest.raises(RegistryError, match="resolves outside"):
        FolderModelRegistry(models).publish("linked", "v1", model, {})
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("kind", KINDS + ("dot",))
def test_a_training_workflow_that_is_not_a_folder_name_is_a_configuration_error(tmp_path, kind):
    raw = json.loads((Path(configuration.__file__).with_name("examples") / "solubility.json").read_text())
    raw["workflow"] = "." if kind == "dot" else ".." if kind == "dotdot" else bad_value(kind, tmp_path)
    with pytest.raises(ConfigError, match="workflow") as refused:
        configuration.from_dict(raw)
    assert repr(raw["workflow"]) in str(refused.value)


# --- partition keys used as folders ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS + ("dot",))
def test_a_partition_key_is_never_a_folder_outside_the_work_area(settings, tmp_path, kind):
    key = "." if kind == "dot" else ".." if kind == "dotdot" else bad_value(kind, tmp_path)
    before = outside_nas(settings.nas_root)
    with pytest.raises(paths.UnsafePathError, match="training partition key"):
        steps.version_folder(settings.work_root, key)
    io_manager = WorkAreaIOManager().create_io_manager(None)
    with pytest.raises(paths.UnsafePathError, match="partition key"):
        io_manager.handle_output(dg.build_output_context(asset_key="training_data", partition_key=key), {"x": 1})
    with pytest.raises(paths.UnsafePathError, match="partition key"):
        io_manager.load_input(dg.build_input_context(asset_key="training_data", partition_key=key))
    assert outside_nas(settings.nas_root) == before
    assert not (settings.work_root / "training").exists() or not any((settings.work_root / "training").iterdir())


def test_a_good_partition_key_is_written_and_read_under_the_work_area(settings):
    io_manager = WorkAreaIOManager().create_io_manager(None)
    io_manager.handle_output(
        dg.build_output_context(asset_key="training_data", partition_key="solubility-0a1b"), {"x": 1}
    )
    assert io_manager.load_input(
        dg.build_input_context(asset_key="training_data", partition_key="solubility-0a1b")
    ) == {"x": 1}
    assert (settings.work_root / "dagster-io" / "training_data" / "solubility-0a1b").is_file()
    assert (
        steps.version_folder(settings.work_root, "solubility-0a1b")
        == settings.work_root / "training" / "solubility-0a1b"
    )


@pytest.mark.parametrize("workflow", ["-solubility", "solubility.", "_x"])
def test_a_training_workflow_that_is_not_a_pod_label_is_a_configuration_error(workflow):
    raw = json.loads((Path(configuration.__file__).with_name("examples") / "solubility.json").read_text())
    raw["workflow"] = workflow
    with pytest.raises(ConfigError, match="starting and ending with a letter or digit"):
        configuration.from_dict(raw)
