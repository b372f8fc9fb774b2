"""Every value that names a file or folder (plate barcode, pipeline file, model name and
version, training workflow, partition key) is refused when it is `..`, holds a `/`, is
an absolute path or holds a NUL byte: with a message naming the value, and nothing
created outside the NAS root (checked on the filesystem, before and after)."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from dagster_helpers import launch, tick

from cpp_dagster import paths
from cpp_dagster.analysis import lifecycle
from cpp_dagster.analysis.cellprofiler import CellProfilerError
from cpp_dagster.analysis.planning import PlanningError, SubAnalysisOptions
from cpp_dagster.defs.resources import WorkAreaIOManager
from cpp_dagster.demo.register import DEMO_CHANNEL_MAP, DEMO_PIPELINE, DEMO_PIPELINE_FILE, demo_pipeline_meta
from cpp_dagster.demo.synthetic_plate import write_plate
from cpp_dagster.imagedb.rows import Image, PlateAcquisition
from cpp_dagster.training import configuration, steps
from cpp_dagster.training.configuration import ConfigError
from cpp_dagster.training.registry import FolderModelRegistry, RegistryError

KINDS = ("dotdot", "slash", "absolute", "nul")
# what the refusal says, per kind of bad value
WHY = {"dotdot": r"contains a path separator|is not a name|contains '\.\.'",
       "slash": "contains a path separator", "absolute": "contains a path separator|is an absolute path",
       "nul": "contains a control character"}


def bad_value(kind: str, tmp_path: Path, name: str = "escaped") -> str:
    """A value of each kind; the escaping ones would land beside the NAS root (in
    tmp_path, which `outside_nas` watches)."""
    return {"dotdot": f"../../{name}", "slash": f"plates/{name}", "absolute": str(tmp_path / name),
            "nul": f"{name}\x00x"}[kind]


def outside_nas(nas_root: Path) -> set[str]:
    """Everything beside the NAS root (its parent's tree, the Dagster instance's own
    folder aside)."""
    parent = nas_root.parent
    return {str(p.relative_to(parent)) for p in parent.rglob("*")
            if not p.is_relative_to(nas_root) and p.relative_to(parent).parts[0] != "dagster_home"}


def plate(lab, barcode: str) -> int:
    """A finished plate acquisition in imagedb with `barcode`; its images in a safe folder."""
    folder = lab.nas / "images" / "safe"
    files = write_plate(folder, "SAFE", ["B02"], [1], seed=2)
    acq = lab.db.add_plate_acquisition(barcode, channel_map_id=DEMO_CHANNEL_MAP, folder=str(folder))
    lab.db.add_images(acq, barcode, [Image(f["well"], f["site"], f["channel"], f["path"], f["z"]) for f in files])
    lab.db.finish_plate_acquisition(acq)
    return acq


# --- plate barcode ------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_plate_barcode_that_would_leave_results_is_refused_before_anything_is_written(lab, tmp_path, kind):
    value = bad_value(kind, tmp_path)
    before = outside_nas(lab.nas)
    if kind == "nul":  # imagedb cannot even hold it; results_dir refuses it all the same
        with pytest.raises(ValueError, match="NUL"):
            lab.db.add_plate_acquisition(value, channel_map_id=DEMO_CHANNEL_MAP, folder=str(tmp_path))
        acquisition = PlateAcquisition(1, value, None, None, DEMO_CHANNEL_MAP, 1, None, None)
        with pytest.raises(paths.UnsafePathError, match=WHY[kind]):
            lifecycle.results_dir(lab.settings, acquisition, 1)
    else:
        sub_id = lab.db.submit_analysis(plate(lab, value), DEMO_PIPELINE).sub_ids[0]
        with pytest.raises(paths.UnsafePathError, match=WHY[kind]) as refused:
            lifecycle.prepare(lab.db, lab.settings, sub_id)
        assert "plate barcode" in str(refused.value) and repr(value) in str(refused.value)
        assert lab.db.sub_analysis(sub_id).start is None  # not started, no work folder
        assert not (lab.settings.work_root / f"sub_{sub_id}").exists()
    assert outside_nas(lab.nas) == before
    assert not (lab.nas / "results").exists()


def test_an_escaping_barcode_fails_its_sub_analysis_in_imagedb_through_the_real_job(lab, dagster_instance, tmp_path):
    """Beside a good plate: the bad one fails with the reason in imagedb, nothing is written
    beside the NAS root, and the good one still plans (it is requested by the same tick)."""
    bad = lab.db.submit_analysis(plate(lab, "../../escaped"), DEMO_PIPELINE).sub_ids[0]
    good = lab.db.submit_analysis(plate(lab, "GOOD"), DEMO_PIPELINE).sub_ids[0]
    before = outside_nas(lab.nas)
    requests = {r.tags["imagedb/sub_id"]: r for r in tick(dagster_instance).run_requests}
    assert set(requests) == {str(bad), str(good)}
    run = launch(dagster_instance, requests[str(bad)])
    assert run.status == dg.DagsterRunStatus.FAILURE
    sub = lab.db.sub_analysis(bad)
    assert sub.error is not None and sub.status["state"] == "failed"
    assert sub.status["message"] == ("step features_step.plan_batches failed: plate barcode '../../escaped' "
                                     "contains a path separator")
    assert outside_nas(lab.nas) == before and not (tmp_path / "escaped").exists()
    assert lab.db.sub_analysis(good).error is None


# --- pipeline file ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_pipeline_file_outside_the_pipelines_folder_is_not_launched(lab, dagster_instance, tmp_path, kind):
    """Refused by the sensor's check before any run: the sub-analysis fails in imagedb
    with the reason, and no run is requested."""
    value = bad_value(kind, tmp_path, "escaped.cppipe")
    Path(value if kind == "absolute" else tmp_path / "escaped.cppipe").write_text("not a pipeline")
    meta = demo_pipeline_meta(batch_size=2)
    meta["sub_analyses"][0]["pipeline_file"] = value
    lab.db.put_pipeline("escaping", meta)
    sub_id = lab.db.submit_analysis(plate(lab, "PIPE"), "escaping").sub_ids[0]
    before = outside_nas(lab.nas)
    assert tick(dagster_instance).run_requests == []
    sub = lab.db.sub_analysis(sub_id)
    assert sub.error is not None and not (lab.settings.work_root / f"sub_{sub_id}").exists()
    assert sub.status["message"].startswith(f"not launched: pipeline_file {value!r} ")
    assert "pipelines folder" in sub.status["message"]
    assert outside_nas(lab.nas) == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_pipeline_file_value_of_each_kind_is_a_planning_error(kind, tmp_path):
    value = "x/" + bad_value(kind, tmp_path, "escaped.cppipe") if kind == "slash" else \
        bad_value(kind, tmp_path, "escaped.cppipe")
    if kind == "slash":  # a subfolder of the pipelines folder is allowed: `a/b.cppipe`
        assert SubAnalysisOptions.from_meta({"pipeline_file": value}).pipeline_file == value
        return
    with pytest.raises(PlanningError, match="pipeline_file") as refused:
        SubAnalysisOptions.from_meta({"pipeline_file": value})
    assert "inside the pipelines folder" in str(refused.value)


def test_a_pipeline_file_reached_through_a_symlink_out_of_the_folder_is_refused(lab, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.cppipe").write_bytes((lab.settings.pipelines_dir / DEMO_PIPELINE_FILE).read_bytes())
    (lab.settings.pipelines_dir / "linked").symlink_to(outside)
    with pytest.raises(CellProfilerError, match="'linked/x.cppipe' resolves outside"):
        lifecycle.cellprofiler.resolve_pipeline_file(lab.settings.pipelines_dir, "linked/x.cppipe")


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
    io_manager.handle_output(dg.build_output_context(asset_key="training_data", partition_key="solubility-0a1b"),
                             {"x": 1})
    assert io_manager.load_input(dg.build_input_context(asset_key="training_data",
                                                        partition_key="solubility-0a1b")) == {"x": 1}
    assert (settings.work_root / "dagster-io" / "training_data" / "solubility-0a1b").is_file()
    assert steps.version_folder(settings.work_root, "solubility-0a1b") == settings.work_root / "training" / \
        "solubility-0a1b"


@pytest.mark.parametrize("workflow", ["-solubility", "solubility.", "_x"])
def test_a_training_workflow_that_is_not_a_pod_label_is_a_configuration_error(workflow):
    raw = json.loads((Path(configuration.__file__).with_name("examples") / "solubility.json").read_text())
    raw["workflow"] = workflow
    with pytest.raises(ConfigError, match="starting and ending with a letter or digit"):
        configuration.from_dict(raw)
