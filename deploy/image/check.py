"""`make image-check`: the user-code image runs a demo batch as a Kubernetes step pod would,
and its tables equal a local run's over the same batch.

1. The image `make image` tagged for CP_VERSION exists and its CellProfiler label is that version.
2. A demo plate (1 well x 2 sites x 5 dyes) is written to a folder standing in for the NAS
   image share, and one batch of its 2 image sets as a LoadData CSV twice: with the paths the
   host sees (the local run) and with those a pod sees (the image share at its mount path).
3. The local run: `python -m cpp_dagster.demo.batch` with the project's .venv and .venv-cp.
4. The image: the same command under the pods' own settings (cpp_dagster/k8s/pod_as_container.py
   over deploy/k8s-pods.yaml: read-only root, uid 1000, all capabilities dropped, no new
   privileges, /tmp a tmpfs, the NAS and work area mounted as the pod mounts them) with the
   code server's env from helm-values.yaml, and no network (nothing is fetched at start-up).
5. Compared: `cellprofiler --version` inside = the label = CP_VERSION; the pipeline check
   passed inside; each Parquet table equal to the local one but for ExecutionTime_* (timings)
   and the images' folder in path columns; CellProfiler's log names no read-only write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cpp_dagster.demo.batch import BARCODE, compare_tables, write_batch
from cpp_dagster.demo.synthetic_plate import write_plate
from cpp_dagster.k8s.image import LABEL_CP_VERSION, REPOSITORY, checked_cp_version, image_reference, podman_labels
from cpp_dagster.k8s.pod_as_container import podman_run_options
from cpp_dagster.k8s.pod_config import PodSettings
from cpp_dagster.settings import PROJECT_ROOT

PODS = PROJECT_ROOT / "deploy" / "k8s-pods.yaml"
HELM_VALUES = PROJECT_ROOT / "helm-values.yaml"
VOLUMES = ("nas-images", "nas-results", "cpp-work")  # the image share, results (CPP_NAS_ROOT), work area
# what CellProfiler and matplotlib log when a write was refused and they went on without it
READ_ONLY_SIGNS = (
    "Read-only file system",
    "is not a writable directory",
    "Permission denied",
    "created a temporary cache",
)


class CheckFailed(RuntimeError):
    """The image does not run the batch as a pod would, or not to the local run's tables."""


def deployment_env() -> dict[str, str]:
    """The code server's (and so every run's) env from helm-values.yaml."""
    values = yaml.safe_load(HELM_VALUES.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return {e["name"]: str(e["value"]) for e in deployment["env"]}


def run_json(args: list[str], what: str, **kwargs) -> tuple[dict, float]:
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise CheckFailed(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def own(folder: Path, uid: int, gid: int) -> None:
    """A claim as the pod sees it: its files belong to the pod's user and fsGroup."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, gid)


def check(cp_version: str, ref: str) -> dict:
    labels = podman_labels(ref)
    if labels is None:
        raise CheckFailed(f"no image {ref}: build it first (make image CP_VERSION={cp_version})")
    if labels.get(LABEL_CP_VERSION) != cp_version:
        raise CheckFailed(f"{ref} is labelled CellProfiler {labels.get(LABEL_CP_VERSION)}, not {cp_version}")
    settings = PodSettings.load(PODS)
    mounts = {v.name: v for v in settings.volumes}
    if not set(VOLUMES) <= set(mounts):
        raise CheckFailed(f"{PODS.name} mounts {sorted(mounts)}; the check needs {list(VOLUMES)}")
    env = deployment_env()
    pod_images = mounts["nas-images"].mount_path
    with tempfile.TemporaryDirectory(prefix="cpp-image-check.", dir="/var/tmp") as tmp:
        root = Path(tmp)
        host = {name: root / name for name in VOLUMES}
        records = write_plate(host["nas-images"] / BARCODE, BARCODE, ["B02"], [1, 2], seed=7)
        write_batch(root / "local-work" / "batch_0000", records, host["nas-images"], host["nas-images"])
        write_batch(host["cpp-work"] / "batch_0000", records, host["nas-images"], Path(pod_images))
        host["nas-results"].mkdir()
        for name in ("nas-results", "cpp-work"):
            own(host[name], settings.run_as_user, settings.fs_group)

        local_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
        local, local_s = run_json(
            [
                sys.executable,
                "-m",
                "cpp_dagster.demo.batch",
                str(root / "local-work" / "batch_0000"),
                str(root / "local-results"),
            ],
            "the local run",
            env={**local_env, "CPP_WORK_ROOT": str(root / "local-work"), "CPP_NAS_ROOT": str(root / "local-nas")},
            cwd=PROJECT_ROOT,
        )
        results_in_pod = f"{env['CPP_NAS_ROOT']}/results/{BARCODE}"
        options = podman_run_options(settings, host)
        work_in_pod = mounts["cpp-work"].mount_path
        inside, inside_s = run_json(
            ["podman", "run", "--rm", "--network=none", *options, *(f"--env={k}={v}" for k, v in env.items()), ref,
             "python", "-m", "cpp_dagster.demo.batch", f"{work_in_pod}/batch_0000", results_in_pod],
            "the batch in the image",
        )  # fmt: skip
        log = (host["cpp-work"] / "batch_0000" / "cellprofiler.log").read_text()
        signs = [line for line in log.splitlines() if any(s in line for s in READ_ONLY_SIGNS)]
        if signs:
            raise CheckFailed("CellProfiler in the image tried to write where it may not:\n" + "\n".join(signs[:10]))
        if inside["cellprofiler_version"] != cp_version:
            raise CheckFailed(
                f"cellprofiler --version in {ref} says {inside['cellprofiler_version']}, not {cp_version}"
            )
        results_on_host = host["nas-results"] / Path(results_in_pod).relative_to(env["CPP_NAS_ROOT"])
        rows = compare_tables(root / "local-results", results_on_host, str(host["nas-images"]), pod_images)
    return {
        "image": ref,
        "cellprofiler_version": inside["cellprofiler_version"],
        "pipeline_check": inside["pipeline_check"],
        "image_sets": inside["image_sets"],
        "tables_equal": rows,
        "seconds": {"local": round(local_s, 1), "image": round(inside_s, 1)},
        "cellprofiler_seconds": {"local": local["cellprofiler_seconds"], "image": inside["cellprofiler_seconds"]},
        "podman_run_options": options,
    }


def main() -> int:
    os.environ.setdefault("CONTAINERS_CONF", str(PROJECT_ROOT / "deploy" / "image" / "containers.conf"))
    try:
        cp_version = checked_cp_version(
            os.environ.get("CP_VERSION") or None,
            Path(os.environ.get("CP_LOCK") or PROJECT_ROOT / "requirements-cellprofiler.lock"),
        )
        ref = image_reference(cp_version, os.environ.get("IMAGE_REPOSITORY") or REPOSITORY)
        print(json.dumps(check(cp_version, ref), indent=1))
    except Exception as e:  # every failure is the check's answer, as one readable message
        print(f"image-check FAILED: {e}", file=sys.stderr)
        return 1
    print("image-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
