"""Pod configuration of every step on Kubernetes, from the deployment's pod settings and,
for an analysis, its sub-analysis's options. Pure: returns dagster-k8s "raw k8s config"
layers (`container_config`, `pod_spec_config`, `pod_template_spec_metadata`,
`job_spec_config`, `job_metadata`), the values of the k8s executor's `step_k8s_config`
and `per_step_k8s_config` (how they reach a pod: `k8s/executor.py`).

- `step_base_config`: what every step pod shares (volumes, /tmp, least privilege).
- `executor_defaults`: the executor's config when a run gives none: the shared layer,
  the training steps by op name and the analysis steps' deployment defaults.
- `analysis_run_config`: the run config a sub-analysis's run is launched with: a
  narrow request per step (cp_version, resources per sub_type, deadline, priority
  class, labels) that the executor checks against what a run is granted
  (`run_grant.py`) and turns into pod config with `request_layer`.
- `training_run_config`: a training run's workflow label, as such a request.

The deployment settings are a YAML file named by CPP_K8S_CONFIG (on Kubernetes a
ConfigMap mounted into the user-code pods); `deploy/k8s-pods.yaml` is the documented
example.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from kubernetes.utils import parse_quantity

from cpp_dagster.analysis.planning import DEFAULT_JOB_TIMEOUT_S, SubAnalysisOptions

BATCH_OP = "run_cellprofiler"
LABEL_PREFIX = "cpp-dagster"
# what a run may ask for per step unless the pod settings' run_limits say otherwise:
# the deadline fits the longest job_timeout (7 days) and a start-up grace
DEFAULT_RUN_LIMITS = {"cpu": "16", "memory": "64Gi", "deadline_seconds": 8 * 24 * 3600}


class PodConfigError(ValueError):
    """The deployment cannot run this analysis (e.g. no image for its cp_version)."""


@dataclass(frozen=True)
class NasVolume:
    name: str
    claim: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class PodSettings:
    images: Mapping[str, str] = field(default_factory=dict)  # cp_version -> image
    default_cp_version: str | None = None
    resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # sub_type -> resources
    step_resources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # op name -> resources
    volumes: tuple[NasVolume, ...] = ()
    high_priority_class: str | None = None
    priority_class: str | None = None
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    training: Mapping[str, Any] = field(default_factory=dict)  # model training steps: see training_step_config
    tmp_size_limit: str = "1Gi"
    tmp_medium: str = "Memory"  # the /tmp emptyDir: "Memory" (tmpfs) or "" (the node's disk)
    read_only_root_filesystem: bool = True
    imagedb_secret: str | None = "imagedb-credentials"  # analysis steps (they record progress in imagedb)
    training_secret: str | None = "training-credentials"  # training steps that read the store or databases
    startup_grace_seconds: int = 300
    run_as_user: int = 1000
    run_as_group: int = 1000
    fs_group: int = 1000
    # what a run may ask for per step (run_grant.py): CPU, memory, the Job's deadline
    run_limits: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_RUN_LIMITS))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PodSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PodConfigError(f"unknown keys in the pod settings: {unknown}")
        values = dict(raw)
        values["volumes"] = tuple(NasVolume(**v) for v in raw.get("volumes", []))
        values["tolerations"] = tuple(raw.get("tolerations", []))
        values["images"] = {str(k): str(v) for k, v in raw.get("images", {}).items()}
        if values.get("default_cp_version") is not None:
            values["default_cp_version"] = str(values["default_cp_version"])
        limits = {**DEFAULT_RUN_LIMITS, **(raw.get("run_limits") or {})}
        if set(limits) != set(DEFAULT_RUN_LIMITS):
            raise PodConfigError(
                f"unknown keys in the pod settings' run_limits: {sorted(set(limits) - set(DEFAULT_RUN_LIMITS))}"
            )
        values["run_limits"] = limits
        return cls(**values)

    def run_limit(self, name: str) -> Decimal:
        """The cap of `cpu` or `memory` a run may ask for, as a number."""
        return parse_quantity(self.run_limits[name])

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> PodSettings:
        """The pod settings file the deployment names (`settings.launch.k8s_config`)."""
        if not path:
            raise PodConfigError("CPP_K8S_CONFIG is not set: it names the pod settings file (see deploy/k8s-pods.yaml)")
        return cls.from_mapping(yaml.safe_load(Path(path).read_text()) or {})

    def image_for(self, cp_version: str | None) -> str:
        version = cp_version or self.default_cp_version
        if version is None:
            raise PodConfigError("the analysis names no cp_version and the deployment has no default_cp_version")
        if version not in self.images:
            known = ", ".join(sorted(self.images)) or "none"
            raise PodConfigError(f"cp_version {version!r} has no container image configured (known: {known})")
        return self.images[version]


@dataclass(frozen=True)
class AnalysisIds:
    plate_acquisition_id: int
    analysis_id: int
    sub_id: int


# Where a step's programs write, all under the /tmp emptyDir, so that the root filesystem
# can be read-only: CellProfiler's measurements file and scratch folders (TMPDIR),
# matplotlib's font cache and config (HOME/.cache, MPLCONFIGDIR); bytecode is precompiled
# in the image. Measured with strace on a real batch: nothing else is written. `make
# image-check` runs a batch in the image with exactly these (read-only root, no network):
# without MPLCONFIGDIR or a writable HOME, matplotlib rebuilds its cache in every batch.
WRITABLE_ENV = {
    "TMPDIR": "/tmp",
    "HOME": "/tmp/home",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "XDG_CACHE_HOME": "/tmp/.cache",
    "XDG_CONFIG_HOME": "/tmp/.config",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def step_base_config(settings: PodSettings) -> dict:
    """What every step pod shares (the executor's `step_k8s_config`): NAS volumes, a /tmp
    emptyDir, least privilege (no service-account token, RuntimeDefault seccomp,
    non-root, no privilege escalation, no capabilities, a read-only root filesystem) and
    placement. Image, Secrets, labels and resources are per step (below)."""
    mounts = [{"name": v.name, "mount_path": v.mount_path, "read_only": v.read_only} for v in settings.volumes]
    volumes = [
        {"name": v.name, "persistent_volume_claim": {"claim_name": v.claim, "read_only": v.read_only}}
        for v in settings.volumes
    ]
    tmp = {"size_limit": settings.tmp_size_limit, **({"medium": settings.tmp_medium} if settings.tmp_medium else {})}
    container = {
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}, *({"name": k, "value": v} for k, v in WRITABLE_ENV.items())],
        "volume_mounts": [*mounts, {"name": "tmp", "mount_path": "/tmp"}],
        "security_context": {
            "allow_privilege_escalation": False,
            "run_as_non_root": True,
            "capabilities": {"drop": ["ALL"]},
            "read_only_root_filesystem": settings.read_only_root_filesystem,
        },
    }
    pod_spec: dict[str, Any] = {
        "automount_service_account_token": False,  # a step never talks to the Kubernetes API
        "volumes": [*volumes, {"name": "tmp", "empty_dir": tmp}],
        "security_context": {
            "run_as_non_root": True,
            "run_as_user": settings.run_as_user,
            "run_as_group": settings.run_as_group,
            "fs_group": settings.fs_group,
            "seccomp_profile": {"type": "RuntimeDefault"},
        },
    }
    if settings.node_selector:
        pod_spec["node_selector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    return {"container_config": container, "pod_spec_config": pod_spec}


def _step(image: str | None, labels: dict[str, str], secrets: tuple[str | None, ...]) -> tuple[dict, dict, dict]:
    """One step's own layer: its image (none: dagster-k8s's, the code location's), the
    Secrets it needs (as envFrom) and labels on the Job and its pod."""
    container: dict[str, Any] = {"image": image} if image else {}
    env_from = [{"secret_ref": {"name": name}} for name in secrets if name]
    if env_from:
        container["env_from"] = env_from
    pod_spec: dict[str, Any] = {}
    config = {
        "container_config": container,
        "pod_spec_config": pod_spec,
        "pod_template_spec_metadata": {"labels": labels},
        "job_metadata": {"labels": labels},
    }
    return config, container, pod_spec


TRAINING_STEPS = (
    "training_data",
    "descriptors",
    "plan_splits",
    "train_split",
    "collect_split_models",
    "aggregated_model",
    "published_model",
)
CPSIGN_STEPS = ("descriptors", "train_split", "aggregated_model")  # the steps that run the CPSign CLI
CPSIGN_LICENSE_DIR = "/etc/cpsign"
TRAINING_STEPS_WITHOUT_SECRETS = ("plan_splits", "collect_split_models")  # only hand file paths on


def training_step_config(settings: PodSettings, op_name: str, engine: str) -> dict:
    """Raw k8s config for one step of a model-training run (static: by op name and the
    deployment's engine). The `training` section of the pod settings names the image
    (`image`; with the CPSign engine, `cpsign_image` for the steps that call the CPSign
    CLI), the CPSign license Secret (`cpsign_license_secret`, mounted read-only at
    /etc/cpsign, its file named by CPP_CPSIGN_LICENSE) and `resources` and
    `deadline_seconds` by op name; each split is its own pod. The steps that read the
    configuration store, a compound database or the model service get the
    `training_secret` (never the imagedb one from here)."""
    training = settings.training
    uses_cpsign = engine == "cpsign" and op_name in CPSIGN_STEPS
    image = training.get("cpsign_image") if uses_cpsign else training.get("image")
    if not image:
        raise PodConfigError(
            "the pod settings' training section names no " + ("cpsign_image" if uses_cpsign else "image")
        )
    labels = {f"{LABEL_PREFIX}/training-step": op_name}
    secrets = () if op_name in TRAINING_STEPS_WITHOUT_SECRETS else (settings.training_secret,)
    config, container, pod_spec = _step(image, labels, secrets)
    resources = training.get("resources", {}).get(op_name)
    if resources:
        container["resources"] = dict(resources)
    if uses_cpsign and training.get("cpsign_license_secret"):
        secret = training["cpsign_license_secret"]
        pod_spec["volumes"] = [{"name": "cpsign-license", "secret": {"secret_name": secret}}]
        container["volume_mounts"] = [{"name": "cpsign-license", "mount_path": CPSIGN_LICENSE_DIR, "read_only": True}]
        license_file = f"{CPSIGN_LICENSE_DIR}/{training.get('cpsign_license_key', 'license.license')}"
        container["env"] = [{"name": "CPP_CPSIGN_LICENSE", "value": license_file}]
    if training.get("deadline_seconds", {}).get(op_name):
        config["job_spec_config"] = {"active_deadline_seconds": int(training["deadline_seconds"][op_name])}
    return config


# The ops (node names) of an analysis run. Each gets the analysis's image, the imagedb
# Secret and labels; BATCH_OP also resources by sub_type and the job_timeout deadline;
# the others their `step_resources`. A step op added to the analysis jobs goes here.
ANALYSIS_STEPS = (
    "plan_batches",
    "run_cellprofiler",
    "merge_tables",
    "write_single_cell_table",
    "write_well_profiles",
    "complete_step",
)  # the op names of cpp_dagster.defs.analysis.steps (a test checks)


def request_layer(settings: PodSettings, request: Mapping[str, Any]) -> dict:
    """The dagster-k8s layer of a step request (`run_grant.py` checks a run's first):
    cp_version -> image, resources, priority class, deadline, labels on the Job and pod."""
    container: dict[str, Any] = {}
    if request.get("cp_version") is not None:
        container["image"] = settings.image_for(request["cp_version"])
    if request.get("resources"):
        container["resources"] = {kind: dict(values) for kind, values in request["resources"].items()}
    layer: dict[str, Any] = {"container_config": container} if container else {}
    if request.get("priority_class"):
        layer["pod_spec_config"] = {"priority_class_name": request["priority_class"]}
    if request.get("deadline_seconds"):
        layer["job_spec_config"] = {"active_deadline_seconds": int(request["deadline_seconds"])}
    if request.get("labels"):
        layer["pod_template_spec_metadata"] = {"labels": dict(request["labels"])}
        layer["job_metadata"] = {"labels": dict(request["labels"])}
    return layer


def analysis_step_request(
    settings: PodSettings, op_name: str, options: SubAnalysisOptions | None = None, ids: AnalysisIds | None = None
) -> dict:
    """What one step of a sub-analysis's run asks of its pod: the image of its
    cp_version, the priority class, labels; the batch step also resources by sub_type
    and the job_timeout as a hard deadline. Without `options` (a run launched without
    the sensor's run config), the deployment's defaults: `default_cp_version` (no image
    there: the code location's), resources `default`, the default job_timeout,
    `priority_class`, and the label `cpp-dagster/pod-settings: defaults` instead of the
    sub-analysis's."""
    request: dict[str, Any] = {}
    if options is None:
        version = settings.default_cp_version
        if version and version in settings.images:
            request["cp_version"] = version
        labels = {f"{LABEL_PREFIX}/pod-settings": "defaults"}
        sub_type, priority, job_timeout = None, None, DEFAULT_JOB_TIMEOUT_S
    else:
        settings.image_for(options.cp_version)  # PodConfigError: no image for its cp_version
        request["cp_version"] = options.cp_version or settings.default_cp_version
        labels = {
            f"{LABEL_PREFIX}/pod-settings": "sub-analysis",
            f"{LABEL_PREFIX}/sub-type": options.sub_type or "none",
        }
        if ids is not None:
            labels.update(
                {
                    f"{LABEL_PREFIX}/plate-acquisition": str(ids.plate_acquisition_id),
                    f"{LABEL_PREFIX}/analysis": str(ids.analysis_id),
                    f"{LABEL_PREFIX}/sub-analysis": str(ids.sub_id),
                }
            )
        sub_type, priority, job_timeout = options.sub_type, options.priority, options.job_timeout
    request["labels"] = labels
    priority_class = settings.high_priority_class if priority == 1 else settings.priority_class
    if priority_class:
        request["priority_class"] = priority_class
    if op_name == BATCH_OP:
        # dagster-k8s merges this layer onto the defaults' key by key: a sub_type's
        # resources are layered on `default`.
        resources = settings.resources.get(sub_type or "default") or settings.resources.get("default")
        if resources:
            request["resources"] = {kind: dict(values) for kind, values in resources.items()}
        # The batch's own timer kills CellProfiler at job_timeout; the Job's deadline is the
        # hard limit behind it (pod start and imports get a grace period).
        request["deadline_seconds"] = job_timeout + settings.startup_grace_seconds
    elif settings.step_resources.get(op_name):
        request["resources"] = {kind: dict(values) for kind, values in settings.step_resources[op_name].items()}
    return request


def analysis_step_config(
    settings: PodSettings, op_name: str, options: SubAnalysisOptions | None = None, ids: AnalysisIds | None = None
) -> dict:
    """Raw k8s config for one step of a sub-analysis's run (the executor's defaults):
    its request's layer and the `imagedb_secret` (each step records its progress or
    failure in imagedb; never the training credentials)."""
    layer = request_layer(settings, analysis_step_request(settings, op_name, options, ids))
    if settings.imagedb_secret:
        layer.setdefault("container_config", {})["env_from"] = [{"secret_ref": {"name": settings.imagedb_secret}}]
    return layer


def analysis_run_config(
    settings: PodSettings, options: SubAnalysisOptions, ids: AnalysisIds, steps: tuple[str, ...] = ANALYSIS_STEPS
) -> dict:
    """The run config of one sub-analysis's run (what the sensor launches it with): the
    k8s executor's `per_step` request, one per step op. Raises PodConfigError when the
    deployment cannot run it (no image for its cp_version)."""
    return {
        "execution": {"config": {"per_step": {op: analysis_step_request(settings, op, options, ids) for op in steps}}}
    }


def executor_defaults(
    settings: PodSettings, training_engine: str, analysis_steps: tuple[str, ...] = ANALYSIS_STEPS
) -> dict:
    """The k8s executor's config when a run gives none: `step_k8s_config` (every step),
    and `per_step_k8s_config` for the analysis steps (the deployment's defaults) and, if
    the pod settings have a `training` section, the training steps."""
    per_step = {op: analysis_step_config(settings, op) for op in analysis_steps}
    if settings.training:
        per_step.update({op: training_step_config(settings, op, training_engine) for op in TRAINING_STEPS})
    return {"step_k8s_config": step_base_config(settings), "per_step_k8s_config": per_step}


def training_run_config(workflow: str) -> dict:
    """The run config of a model-training run: its workflow as a label on every training
    step's Job and pod (`cpp-dagster/workflow`; the rest of a training step's pod is
    static, in the executor's defaults). `workflow` is a label value (the configuration
    checks it)."""
    labels = {f"{LABEL_PREFIX}/workflow": workflow}
    return {"execution": {"config": {"per_step": {op: {"labels": labels} for op in TRAINING_STEPS}}}}
