"""The user-code image per CellProfiler version: the reference `make image` tags is the one
the pod settings, the Helm values and the stand-in tests name; a CellProfiler version its
lock does not hold is refused before anything is built; the gaps between the pod settings'
`images:` map and what was built are listed."""

from __future__ import annotations

import pytest
import yaml
from k8s_cluster import DEFAULT_IMAGE, IMAGE

from cpp_dagster.demo.register import DEMO_CP_VERSION
from cpp_dagster.k8s.image import (
    CP_LOCK,
    LABEL_CP_VERSION,
    ImageError,
    checked_cp_version,
    gaps,
    image_reference,
    image_tag,
    lock_cp_version,
    main,
)
from cpp_dagster.settings import PROJECT_ROOT

BUILT = image_reference(DEMO_CP_VERSION)


def test_the_deployment_files_and_the_standin_tests_name_the_image_the_build_tags():
    assert checked_cp_version(None) == DEMO_CP_VERSION  # the lock holds the demo's CellProfiler
    pods = yaml.safe_load((PROJECT_ROOT / "deploy" / "k8s-pods.yaml").read_text())
    assert pods["images"] == {DEMO_CP_VERSION: BUILT} and pods["training"]["image"] == BUILT
    (deployment,) = yaml.safe_load((PROJECT_ROOT / "helm-values.yaml").read_text())["dagster-user-deployments"][
        "deployments"
    ]
    assert f"{deployment['image']['repository']}:{deployment['image']['tag']}" == BUILT
    assert IMAGE == BUILT and DEFAULT_IMAGE == image_reference("5.0.0.default")
    assert BUILT == f"registry.example.org/cpp-dagster:0.1.0-cp{DEMO_CP_VERSION}"


@pytest.mark.parametrize(
    "asked",
    ["5.0.0.dev999", "5.0.0.dev78", f"{DEMO_CP_VERSION} ", f"{DEMO_CP_VERSION}\n", f"{DEMO_CP_VERSION};id", ""],
)
def test_a_cellprofiler_version_the_lock_does_not_hold_is_refused_saying_what_it_holds(asked):
    with pytest.raises(ImageError) as e:
        checked_cp_version(asked)
    assert f"is not the CellProfiler version {CP_LOCK.name} holds ('{DEMO_CP_VERSION}')" in str(e.value)
    assert "CP_LOCK" in str(e.value)


def test_a_lock_that_pins_cellprofiler_not_exactly_once_is_refused(tmp_path):
    pinned = "cellprofiler-core-nightly==5.0.0.dev784\n"
    assert lock_cp_version("numpy==1.26.4\n" + pinned + "    # via x\n") == "5.0.0.dev784"
    for text in ("numpy==1.26.4\n", pinned + pinned.replace("784", "785"), "# cellprofiler-core-nightly==5\n"):
        with pytest.raises(ImageError, match="pins cellprofiler-core-nightly"):
            lock_cp_version(text)
    not_a_lock = tmp_path / "passwd"
    not_a_lock.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ImageError, match="0 times"):
        checked_cp_version(None, not_a_lock)


def test_the_reference_command_fails_clearly_for_a_version_the_lock_does_not_hold(capsys):
    assert main(["reference", "--cp-version", "4.2.8"]) == 2
    assert "error: CP_VERSION='4.2.8' is not the CellProfiler version" in capsys.readouterr().err
    assert main(["reference"]) == 0
    assert capsys.readouterr().out.strip() == BUILT


@pytest.mark.parametrize("cp_version", ["5.0/../x", "5 0", "5.0-", "5." + "0" * 70, "5.0:latest"])
def test_an_image_tag_is_a_valid_tag_or_refused(cp_version):
    assert image_tag("5.0.0.dev784", "0.1.0") == "0.1.0-cp5.0.0.dev784"
    with pytest.raises(ImageError, match="is not a valid tag"):
        image_tag(cp_version, "0.1.0")


def test_gaps_are_the_versions_without_an_image_or_with_another_cellprofiler():
    images = {"5.0.0.dev784": BUILT, "4.2.8": "r/cpp-dagster:0.1.0-cp4.2.8", "6.0": "r/cpp-dagster:0.1.0-cp6.0"}
    built = {
        BUILT: {LABEL_CP_VERSION: "5.0.0.dev784"},
        "r/cpp-dagster:0.1.0-cp4.2.8": None,
        "r/cpp-dagster:0.1.0-cp6.0": {LABEL_CP_VERSION: "5.0.0.dev784"},
    }
    assert gaps(images, built) == [
        "cp_version 4.2.8: r/cpp-dagster:0.1.0-cp4.2.8 is not built (make image CP_VERSION=4.2.8)",
        "cp_version 6.0: r/cpp-dagster:0.1.0-cp6.0 holds CellProfiler 5.0.0.dev784, not 6.0",
    ]
    assert gaps({"5.0.0.dev784": BUILT}, {BUILT: {}}) == [
        f"cp_version 5.0.0.dev784: {BUILT} holds CellProfiler no CellProfiler label, not 5.0.0.dev784"
    ]
    assert gaps({"5.0.0.dev784": BUILT}, {BUILT: {LABEL_CP_VERSION: "5.0.0.dev784"}}) == []


@pytest.mark.parametrize(
    "repository", ["Bad Repo/x", "registry.example.org/CPP", "r/x;id", "r//x", "r/x:tag", "-r/x", "", "r/" + "x" * 300]
)
def test_an_image_repository_that_is_not_a_repository_name_is_refused(repository, capsys):
    assert image_reference("5.0", "registry.example.org:5000/lab/cpp-dagster", "0.1.0").endswith(
        "lab/cpp-dagster:0.1.0-cp5.0"
    )
    with pytest.raises(ImageError, match="is not a repository name"):
        image_reference("5.0", repository, "0.1.0")
    assert main(["reference", f"--repository={repository}"]) == 2
    assert "is not a repository name" in capsys.readouterr().err
