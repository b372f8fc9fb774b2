"""A step pod's own settings as `podman run` options, so that the user-code image is run
here as Kubernetes would run it (`make image-check`): taken from the layer every step pod
gets (`pod_config.step_base_config`), never re-typed, so a change to the pod settings is a
change to the check.

    pod securityContext     runAsUser/runAsGroup -> --user, fsGroup -> --group-add
                            (seccomp RuntimeDefault: podman's default profile)
    container securityContext
                            readOnlyRootFilesystem -> --read-only (and no tmpfs of podman's
                            own on /run, /var/tmp: only what the pod mounts is writable),
                            capabilities.drop ALL -> --cap-drop=all,
                            allowPrivilegeEscalation false -> no-new-privileges
    env                     --env
    volumeMounts            a NAS claim -> a bind mount of a host folder (`:ro` as the pod
                            mounts it), the /tmp emptyDir -> a tmpfs of its sizeLimit
                            (medium "", the node's disk: a host folder)

Pure: returns the options; deploy/image/check.py runs them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from cpp_dagster.k8s.pod_config import PodConfigError, PodSettings, step_base_config

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTOR = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_FACTOR.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40})


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes storage quantity as bytes ("2Gi" -> 2147483648); whole numbers only."""
    match = _QUANTITY.match(str(quantity).strip())
    if not match:
        raise PodConfigError(f"size {quantity!r} is not a whole Kubernetes quantity (e.g. 2Gi, 512Mi)")
    return int(match.group(1)) * _FACTOR[match.group(2)]


def podman_run_options(settings: PodSettings, host_dirs: Mapping[str, Path]) -> list[str]:
    """The `podman run` options of a step pod under `settings`; `host_dirs` gives the host
    folder of each volume the pod mounts (by volume name; `tmp` only for a disk-backed /tmp).
    Raises PodConfigError for a volume without a host folder."""
    base = step_base_config(settings)
    container, pod = base["container_config"], base["pod_spec_config"]
    pod_security, security = pod["security_context"], container["security_context"]
    options = [
        f"--user={pod_security['run_as_user']}:{pod_security['run_as_group']}",
        f"--group-add={pod_security['fs_group']}",
        "--security-opt=no-new-privileges" if security["allow_privilege_escalation"] is False else "",
        *(f"--cap-drop={cap.lower()}" for cap in security["capabilities"]["drop"]),
    ]
    if security["read_only_root_filesystem"]:
        options += ["--read-only", "--read-only-tmpfs=false"]
    options += [f"--env={e['name']}={e['value']}" for e in container["env"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volume_mounts"]:
        name, path = mount["name"], mount["mount_path"]
        empty_dir = volumes[name].get("empty_dir")
        if empty_dir is not None and empty_dir.get("medium") == "Memory":
            size = quantity_bytes(empty_dir["size_limit"])
            options.append(f"--tmpfs={path}:rw,nosuid,nodev,size={size},mode=0777")
            continue
        if name not in host_dirs:
            raise PodConfigError(f"volume {name!r} (mounted at {path}) has no host folder to stand in for it")
        suffix = ":ro" if mount.get("read_only") else ""
        options.append(f"--volume={Path(host_dirs[name]).resolve()}:{path}{suffix}")
    return [o for o in options if o]
