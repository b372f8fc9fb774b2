"""What a run may ask of its pods on Kubernetes, and nothing more.

Dagster's UI has no login: anyone on the lab network can launch a run with any run
config. So a pod's security context, volumes, Secrets, service account, namespace and
placement are the deployment's (the pod settings, `pod_config.py`) and never a run's. A
run's executor config is a narrow request per step op (`execution.config.per_step`):

- `cp_version`: a CellProfiler version the pod settings have an image for;
- `resources`: `requests` / `limits` of `cpu` and `memory`, each within the pod
  settings' `run_limits`;
- `deadline_seconds`: the Job's deadline, at most `run_limits.deadline_seconds`;
- `priority_class`: one of the pod settings' priority classes;
- `labels`: `cpp-dagster/<name>` labels with label values.

Anything else is refused with a message naming the field (`RunGrantError`); `grant`
turns a checked request into the dagster-k8s layer merged onto the defaults. Pure: no
Dagster (the executor's config schema is in `executor.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from cpp_dagster import labels as label_rules
from cpp_dagster.k8s.pod_config import LABEL_PREFIX, PodConfigError, PodSettings, request_layer

REQUEST_FIELDS = ("cp_version", "resources", "deadline_seconds", "priority_class", "labels")
RESOURCE_KINDS = ("requests", "limits")
RESOURCE_NAMES = ("cpu", "memory")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
WHERE = "execution.config.per_step"


class RunGrantError(PodConfigError):
    """A run asked its pods for something the deployment does not grant a run."""


def quantity(value: object, where: str) -> Decimal:
    """A Kubernetes quantity ("500m", "4Gi") as a number, or RunGrantError."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RunGrantError(f"{where}: {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    try:
        return parse_quantity(value)
    except (ValueError, ArithmeticError):
        raise RunGrantError(f"{where}: {str(value)[:40]!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)") from None


def check_resources(settings: PodSettings, resources: object, where: str) -> dict:
    """`resources` as given, once every quantity is a positive amount of CPU or memory
    within the deployment's caps and no request exceeds its limit."""
    if not isinstance(resources, Mapping):
        raise RunGrantError(f"{where}: must be a mapping of requests and limits")
    amounts: dict[str, dict[str, Decimal]] = {}
    for kind, values in resources.items():
        if kind not in RESOURCE_KINDS:
            raise RunGrantError(f"{where}.{kind}: not granted to a run (only {', '.join(RESOURCE_KINDS)})")
        if not isinstance(values, Mapping):
            raise RunGrantError(f"{where}.{kind}: must be a mapping of cpu and memory")
        for name, value in values.items():
            if name not in RESOURCE_NAMES:
                raise RunGrantError(f"{where}.{kind}.{name}: not granted to a run (only {', '.join(RESOURCE_NAMES)})")
            amount = quantity(value, f"{where}.{kind}.{name}")
            cap = settings.run_limit(name)
            if amount <= 0:
                raise RunGrantError(f"{where}.{kind}.{name}: {value} is not a positive amount")
            if amount > cap:
                raise RunGrantError(
                    f"{where}.{kind}.{name}: {value} is above this deployment's cap of "
                    f"{settings.run_limits[name]} (pod settings: run_limits.{name})"
                )
            amounts.setdefault(kind, {})[name] = amount
    for name, request in amounts.get("requests", {}).items():
        limit = amounts.get("limits", {}).get(name)
        if limit is not None and request > limit:
            raise RunGrantError(f"{where}.requests.{name}: the request is above the limit")
    return {kind: dict(values) for kind, values in resources.items()}


def check_labels(values: object, where: str) -> dict[str, str]:
    if not isinstance(values, Mapping):
        raise RunGrantError(f"{where}: must be a mapping of label names to values")
    out = {}
    for key, value in values.items():
        prefix, _, name = str(key).partition("/")
        if prefix != LABEL_PREFIX or not _LABEL_NAME.match(name):
            raise RunGrantError(
                f"{where}: label {str(key)[:80]!r} is not granted to a run (only {LABEL_PREFIX}/<name>)"
            )
        if not label_rules.is_label_value(value):
            raise RunGrantError(f"{where}.{key}: {str(value)[:80]!r} is not a label value ({label_rules.RULE})")
        out[key] = value
    return out


def check_request(settings: PodSettings, op: str, request: object) -> dict:
    """`request` (one op's entry of `per_step`), checked field by field."""
    where = f"{WHERE}.{op}"
    if not isinstance(request, Mapping):
        raise RunGrantError(f"{where}: must be a mapping of {', '.join(REQUEST_FIELDS)}")
    unknown = sorted(str(k) for k in set(request) - set(REQUEST_FIELDS))
    if unknown:
        raise RunGrantError(
            f"{where}: {', '.join(unknown)} not granted to a run; a run may set only {', '.join(REQUEST_FIELDS)} "
            "(pod security, volumes, Secrets and images are the deployment's)"
        )
    checked: dict[str, Any] = {}
    if request.get("cp_version") is not None:
        try:
            settings.image_for(str(request["cp_version"]))
        except PodConfigError as e:
            raise RunGrantError(f"{where}.cp_version: {e}") from None
        checked["cp_version"] = str(request["cp_version"])
    if request.get("resources") is not None:
        checked["resources"] = check_resources(settings, request["resources"], f"{where}.resources")
    if request.get("deadline_seconds") is not None:
        deadline = request["deadline_seconds"]
        cap = settings.run_limits["deadline_seconds"]
        if isinstance(deadline, bool) or not isinstance(deadline, int) or not 0 < deadline <= cap:
            raise RunGrantError(
                f"{where}.deadline_seconds: {str(deadline)[:40]} is not between 1 and this deployment's cap of "
                f"{cap} s (pod settings: run_limits.deadline_seconds)"
            )
        checked["deadline_seconds"] = deadline
    if request.get("priority_class") is not None:
        granted = sorted(c for c in (settings.priority_class, settings.high_priority_class) if c)
        if request["priority_class"] not in granted:
            raise RunGrantError(
                f"{where}.priority_class: {str(request['priority_class'])[:80]!r} is not one of this deployment's "
                f"priority classes ({', '.join(granted) or 'none'})"
            )
        checked["priority_class"] = request["priority_class"]
    if request.get("labels") is not None:
        checked["labels"] = check_labels(request["labels"], f"{where}.labels")
    return checked


def grant(settings: PodSettings, op: str, request: object) -> dict:
    """The dagster-k8s layer (`per_step_k8s_config[op]`) of a checked request."""
    return request_layer(settings, check_request(settings, op, request))


def grants(settings: PodSettings, per_step: object) -> dict[str, dict]:
    """Every op's layer of a run's `per_step` request."""
    if per_step is None:
        return {}
    if not isinstance(per_step, Mapping):
        raise RunGrantError(f"{WHERE}: must be a mapping of op names to requests")
    return {str(op): grant(settings, str(op), request) for op, request in per_step.items()}
