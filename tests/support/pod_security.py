"""Pod Security Admission's `restricted` level (kubernetes.io: "Pod Security Standards",
the baseline and restricted controls) as a check of one pod spec, in the API's camelCase
form, so that tests can show every pod this project creates is admitted in a namespace
that enforces it (deploy/namespace.yaml) and what a hostile spec would be refused for.
A model of the rules, not the admission controller itself."""

from __future__ import annotations

ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict) -> list[str]:
    """Why `pod` (a PodSpec) would be refused under `restricted`; [] if admitted."""
    out = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            out.append(f"{host}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']}: {sorted(kinds - ALLOWED_VOLUMES)}")
    pod_security = pod.get("securityContext") or {}
    if pod_security.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        security = c.get("securityContext") or {}
        name = c.get("name", "?")
        if security.get("privileged"):
            out.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True):
            out.append(f"{name}: runAsNonRoot is not true")
        if security.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {capabilities['add']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
    return out
