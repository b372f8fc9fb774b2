"""`make image-check` runs the image under the step pods' own settings: the podman options
come from the layer every step pod gets (deploy/k8s-pods.yaml through pod_config), so a
change to the pod settings changes the check; and two runs' tables are equal only when
every value but the timings and the images' folder is."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from k8s_cluster import EXAMPLE

from cpp_dagster.demo.batch import TablesDiffer, compare_tables
from cpp_dagster.k8s.pod_as_container import podman_run_options, quantity_bytes
from cpp_dagster.k8s.pod_config import WRITABLE_ENV, PodConfigError, PodSettings

HOST = {"nas-images": "/srv/images", "nas-results": "/srv/results", "cpp-work": "/srv/work"}


def settings(**changes) -> PodSettings:
    return PodSettings.from_mapping({**yaml.safe_load(EXAMPLE.read_text()), **changes})


def test_the_example_pod_settings_run_read_only_unprivileged_with_tmp_the_only_writable_place():
    options = podman_run_options(settings(), HOST)
    for expected in (
        "--user=1000:1000",
        "--group-add=1000",
        "--security-opt=no-new-privileges",
        "--cap-drop=all",
        "--read-only",
        "--read-only-tmpfs=false",  # podman's own tmpfs on /run and /var/tmp: not in a pod
        "--volume=/srv/images:/share/mikro:ro",
        "--volume=/srv/results:/share/cpp",
        "--volume=/srv/work:/work-area",
        f"--tmpfs=/tmp:rw,nosuid,nodev,size={2 * 2**30},mode=0777",
        "--env=OMP_NUM_THREADS=1",
    ):
        assert expected in options
    assert {o.removeprefix("--env=") for o in options if o.startswith("--env=")} >= {
        f"{k}={v}" for k, v in WRITABLE_ENV.items()
    }
    assert not [o for o in options if o.startswith(("--privileged", "--cap-add", "--network"))]


def test_a_change_to_the_pod_settings_is_a_change_to_the_check(tmp_path):
    changed = podman_run_options(
        settings(read_only_root_filesystem=False, run_as_user=2000, fs_group=3000, tmp_medium=""),
        {**HOST, "tmp": tmp_path},
    )
    assert "--read-only" not in changed
    assert "--user=2000:1000" in changed and "--group-add=3000" in changed
    assert f"--volume={tmp_path}:/tmp" in changed and not [o for o in changed if o.startswith("--tmpfs")]


def test_a_volume_without_a_host_folder_is_refused_by_name():
    with pytest.raises(PodConfigError, match=r"volume 'cpp-work' \(mounted at /work-area\) has no host folder"):
        podman_run_options(settings(), {k: v for k, v in HOST.items() if k != "cpp-work"})


@pytest.mark.parametrize("bad", ["1.5Gi", "2 Gi", "-1Gi", "2Gi,exec", "2Gi:rw", "", "Gi"])
def test_tmp_sizes_are_whole_kubernetes_quantities(bad):
    assert quantity_bytes("2Gi") == 2 * 2**30 and quantity_bytes("512Mi") == 512 * 2**20
    assert quantity_bytes("1G") == 10**9 and quantity_bytes("1000") == 1000
    with pytest.raises(PodConfigError, match="is not a whole Kubernetes quantity"):
        podman_run_options(settings(tmp_size_limit=bad), HOST)


def write(folder, name, **columns):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / f"{name}.parquet")


def test_tables_equal_but_for_timings_and_the_images_folder(tmp_path):
    local, image = tmp_path / "local", tmp_path / "image"
    write(local, "Image", PathName_DNA=["/var/tmp/x/nas-images/P"], Count=[3.0], ExecutionTime_01=[1.5])
    write(image, "Image", PathName_DNA=["/share/mikro/P"], Count=[3.0], ExecutionTime_01=[0.9])
    assert compare_tables(local, image, "/var/tmp/x/nas-images", "/share/mikro") == {"Image.parquet": 1}


def test_a_measurement_that_differs_or_a_missing_table_fails_the_check(tmp_path):
    local, image = tmp_path / "local", tmp_path / "image"
    write(local, "Nuclei", Area=[10.0, 11.0], Intensity=[0.5, 0.25])
    write(image, "Nuclei", Area=[10.0, 11.0], Intensity=[0.5, 0.2500001])
    with pytest.raises(TablesDiffer, match=r"Nuclei.parquet: .* in \['Intensity'\]"):
        compare_tables(local, image, "/h", "/p")
    write(local, "Cells", Area=[1.0])
    with pytest.raises(TablesDiffer, match="the image wrote tables"):
        compare_tables(local, image, "/h", "/p")
    with pytest.raises(TablesDiffer, match="the image wrote tables"):
        compare_tables(tmp_path / "nothing", tmp_path / "nothing", "/h", "/p")
