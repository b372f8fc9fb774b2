"""The Job/Pod bookkeeping of the k8s stand-in and the runner of each Pod's container.

`JobController` does here what the Job controller and the kubelet do in a cluster: it
keeps every Job with its one Pod (`_Job`), builds the container's env from the Secrets
and config maps, runs the container as a local process group, kills it (test hooks,
deletes, `activeDeadlineSeconds`), records how it ended and renders Job and Pod as the
API's JSON.  `KubeStandIn` (k8s_standin.py) puts the HTTP API in front of it; what the
stand-in models and what it does not is described there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import shutil
import signal
import string
import subprocess
import threading
import uuid
from pathlib import Path

DEADLINE = "DeadlineExceeded"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "reason": reason,
            "code": code,
            "message": message,
        }


class _ConfigError(Exception):
    """The container's env cannot be built (CreateContainerConfigError)."""


class _Job:
    """A Job and its one Pod (fields `pod_*`, `phase`, `proc`...)."""

    def __init__(self, ns: str, body: dict, logs: Path):
        self.ns, self.body, self.name = ns, body, body["metadata"]["name"]
        self.uid, self.created = str(uuid.uuid4()), _now()
        self.status: dict = {"active": 1, "ready": 0, "startTime": self.created}
        self.timer: threading.Timer | None = None
        self.template = body["spec"]["template"]
        self.container = self.template["spec"]["containers"][0]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        self.pod_name, self.pod_uid = f"{self.name}-{suffix}", str(uuid.uuid4())
        self.log_path = logs / f"{ns}.{self.pod_name}.log"
        self.labels = {
            **(self.template.get("metadata") or {}).get("labels", {}),
            "job-name": self.name,
            "controller-uid": self.uid,
            "batch.kubernetes.io/job-name": self.name,
            "batch.kubernetes.io/controller-uid": self.uid,
        }
        self.phase, self.waiting = "Pending", {"reason": "ContainerCreating"}
        self.started = self.finished = self.exit_code = self.term_reason = None
        self.pod_reason = self.message = None
        self.kill_reason: str | None = None  # set just before we SIGKILL it
        self.proc: subprocess.Popen | None = None
        self.reaped = self.orphaned = False
        self.watcher: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return bool(self.status.get("succeeded") or self.status.get("failed"))

    def log(self) -> str:
        """The container's stdout+stderr so far ("" before it started)."""
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


class JobController:
    """Jobs and their Pods by namespace and name, each Pod's container a local process.

    `workdir` (where pod logs go) must be set before the first Job is added.  `_lock`
    guards all state; the methods starting with `_` expect it held unless they say
    otherwise.  Public: `jobs` (Job bodies as received, in order) and the test hooks
    `kill`, `wait_for`, `pod_name`, `pod_log` (they also find deleted Jobs).
    """

    workdir: Path

    def __init__(
        self, base_env: dict | None, secrets: dict | None, config_maps: dict | None, cwd: str | os.PathLike | None
    ):
        self.base_env = (
            dict(base_env)
            if base_env is not None
            else {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        )
        self.secrets, self.config_maps = dict(secrets or {}), dict(config_maps or {})
        self.cwd = str(cwd or os.getcwd())
        self.jobs: list[dict] = []
        self._jobs: dict[tuple[str, str], _Job] = {}  # by (namespace, job name)
        self._pods: dict[tuple[str, str], _Job] = {}  # by (namespace, pod name)
        self._history: list[_Job] = []  # every Job ever created, for the hooks
        self._lock = threading.Condition()
        self._rv = 0

    def stop_all(self) -> None:
        """Kill every Job still running and wait for their watchers (takes the lock)."""
        with self._lock:
            for job in self._history:
                self._kill(job, "Error")
        for job in self._history:
            if job.watcher:
                job.watcher.join(timeout=10)

    # ---- hooks for tests (they also find deleted Jobs) ----------------------------
    def _find(self, job_name: str, namespace: str | None) -> _Job:
        for job in reversed(self._history):
            if job.name == job_name and namespace in (None, job.ns):
                return job
        raise KeyError(f"no job {job_name!r}")

    def kill(self, job_name: str, reason: str = "OOMKilled", namespace: str | None = None) -> bool:
        """SIGKILL the Job's process group; its container terminates with `reason`. True
        if the container was running; False (nothing done) if it had not started or
        had already ended, so a test never counts a kill that came too late."""
        with self._lock:
            job = self._find(job_name, namespace)
            running = job.proc is not None and job.phase not in ("Succeeded", "Failed") and not job.reaped
            if running:
                self._kill(job, reason)
            return running

    def wait_for(self, job_name: str, timeout: float = 30, namespace: str | None = None) -> dict:
        """Block until the Job succeeded or failed; return its status (JSON dict)."""
        with self._lock:
            job = self._find(job_name, namespace)
            if not self._lock.wait_for(lambda: job.done, timeout):
                raise TimeoutError(f"job {job_name} still running after {timeout}s")
            return json.loads(json.dumps(job.status))

    def pod_name(self, job_name: str, namespace: str | None = None) -> str:
        with self._lock:
            return self._find(job_name, namespace).pod_name

    def pod_log(self, job_name: str, namespace: str | None = None) -> str:
        with self._lock:
            job = self._find(job_name, namespace)
        return job.log()

    # ---- Jobs and Pods come and go ------------------------------------------------
    def _add_job(self, ns: str, body: dict) -> dict:
        """Record a (validated) Job and its Pod, start the Pod; the Job's JSON (takes the lock)."""
        name = body["metadata"]["name"]
        with self._lock:
            if (ns, name) in self._jobs:
                raise ApiError(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            self.jobs.append(json.loads(json.dumps(body)))
            job = self._jobs[ns, name] = _Job(ns, body, self.workdir)
            self._pods[ns, job.pod_name] = job
            self._history.append(job)
            if body["spec"].get("activeDeadlineSeconds"):
                job.timer = threading.Timer(body["spec"]["activeDeadlineSeconds"], self._deadline, (job,))
                job.timer.daemon = True
                job.timer.start()
            job.watcher = threading.Thread(target=self._run, args=(job,), daemon=True)
            job.watcher.start()
            self._rv += 1
            return self._job_json(job)

    def _delete_job(self, job: _Job, cascade: bool) -> None:
        """Background/Foreground delete the Pod with the Job; otherwise it is orphaned and runs on."""
        del self._jobs[job.ns, job.name]
        if job.timer:
            job.timer.cancel()
        if cascade:
            self._pods.pop((job.ns, job.pod_name), None)
            self._kill(job, "Error")
        else:  # batch/v1's default is to orphan the pods (they run on)
            job.orphaned = True
        self._rv += 1

    def _delete_pod(self, job: _Job) -> dict:
        """Kill the Pod (its Job fails); the Pod's JSON with its deletionTimestamp."""
        del self._pods[job.ns, job.pod_name]
        self._kill(job, "Error")
        out = self._pod_json(job)
        out["metadata"]["deletionTimestamp"] = _now()
        return out

    # ---- state changes ------------------------------------------------------------
    def _kill(self, job: _Job, reason: str) -> None:
        if job.timer:
            job.timer.cancel()
        if job.phase in ("Succeeded", "Failed"):
            return
        job.kill_reason = job.kill_reason or reason
        if job.proc is None:  # not started: the watcher will see it is over
            self._finish(job, 137, job.kill_reason)
        elif not job.reaped:  # an unreaped leader keeps its pid (= pgid) from reuse
            try:
                os.killpg(job.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _finish(
        self, job: _Job, code: int | None, reason: str, message: str | None = None, waiting: bool = False
    ) -> None:
        job.finished, job.phase = _now(), "Succeeded" if code == 0 else "Failed"
        job.exit_code, job.term_reason, job.message = code, reason, message
        job.waiting = {"reason": reason, "message": message} if waiting else None
        if waiting:
            job.pod_reason = reason
        elif job.kill_reason == DEADLINE:
            job.pod_reason, job.term_reason = DEADLINE, "Error"
        if job.timer:
            job.timer.cancel()
        cond = {"status": "True", "lastProbeTime": job.finished, "lastTransitionTime": job.finished}
        base = {"startTime": job.status["startTime"], "ready": 0}
        if code == 0:
            job.status = {
                **base,
                "succeeded": 1,
                "completionTime": job.finished,
                "conditions": [{"type": "Complete", **cond}],
            }
        else:
            why, msg = (
                (DEADLINE, "Job was active longer than specified deadline")
                if job.kill_reason == DEADLINE
                else (reason, message)
                if waiting
                else ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            )
            job.status = {
                **base,
                "failed": 1,
                "conditions": [{"type": "Failed", "reason": why, "message": msg, **cond}],
            }
        self._rv += 1
        self._lock.notify_all()

    def _deadline(self, job: _Job) -> None:
        with self._lock:
            self._kill(job, DEADLINE)

    # ---- the container ------------------------------------------------------------
    # ---- the container ------------------------------------------------------------
    def _env(self, job: _Job) -> dict:
        def lookup(store, kind, ref, key=None):
            data = store.get(ref.get("name"))
            if data is None or (key is not None and key not in data):
                if ref.get("optional"):
                    return None
                raise _ConfigError(
                    f'{kind} "{ref.get("name")}" not found'
                    if data is None
                    else f"couldn't find key {key} in {kind} {job.ns}/{ref['name']}"
                )
            return data if key is None else data[key]

        fields = {
            "metadata.name": job.pod_name,
            "metadata.namespace": job.ns,
            "metadata.uid": job.pod_uid,
            "spec.nodeName": "standin",
            "spec.serviceAccountName": job.template["spec"].get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        env, c = {**self.base_env, "HOSTNAME": job.pod_name}, job.container
        for src in c.get("envFrom") or []:
            data = (
                lookup(self.secrets, "secret", src["secretRef"])
                if "secretRef" in src
                else lookup(self.config_maps, "configmap", src.get("configMapRef", {}))
            )
            env.update({src.get("prefix", "") + k: str(v) for k, v in (data or {}).items()})
        for e in c.get("env") or []:
            vf = e.get("valueFrom")
            if not vf:
                value = e.get("value", "")
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                value = lookup(self.secrets, "secret", ref, ref["key"])
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                value = lookup(self.config_maps, "configmap", ref, ref["key"])
            elif vf.get("fieldRef", {}).get("fieldPath") in fields:
                value = fields[vf["fieldRef"]["fieldPath"]]
            else:
                raise _ConfigError(f"env {e['name']}: {vf} is not modelled by the k8s stand-in")
            if value is not None:
                env[e["name"]] = str(value)
        return env

    def _run(self, job: _Job) -> None:
        """Watcher thread: start the container, wait for it, record the outcome."""
        with self._lock:
            if job.phase != "Pending":  # killed or deleted before it started
                return
            try:
                env = self._env(job)
            except _ConfigError as e:
                return self._finish(job, None, "CreateContainerConfigError", str(e), waiting=True)
            argv = [*(job.container.get("command") or []), *(job.container.get("args") or [])]
            exe = shutil.which(argv[0], path=env.get("PATH", "")) if argv else None
            if not exe:
                return self._finish(job, 128, "StartError", f"exec: {argv[:1]}: executable file not found in $PATH")
            with open(job.log_path, "wb") as log:
                job.proc = subprocess.Popen(
                    [exe, *argv[1:]],
                    env=env,
                    cwd=job.container.get("workingDir") or self.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            job.phase, job.started, job.waiting = "Running", _now(), None
            self._rv += 1
        os.waitid(os.P_PID, job.proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        with self._lock:
            try:  # the container is over: so is everything else in it
                os.killpg(job.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc, job.reaped = job.proc.wait(), True
            self._finish(job, rc if rc >= 0 else 128 - rc, job.kill_reason or ("Completed" if rc == 0 else "Error"))

    # ---- Job and Pod as the API shows them ----------------------------------------
    def _job_json(self, job: _Job) -> dict:
        meta = {
            **job.body["metadata"],
            "namespace": job.ns,
            "uid": job.uid,
            "generation": 1,
            "resourceVersion": str(self._rv),
            "creationTimestamp": job.created,
            "labels": job.body["metadata"].get("labels") or {},
        }
        spec = {
            "parallelism": 1,
            "completions": 1,
            **job.body["spec"],
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": job.uid}},
        }
        return {"kind": "Job", "apiVersion": "batch/v1", "metadata": meta, "spec": spec, "status": dict(job.status)}

    def _pod_json(self, job: _Job) -> dict:
        c, running = job.container, job.phase == "Running"
        if job.waiting:
            state = {"waiting": {k: v for k, v in job.waiting.items() if v}}
        elif running:
            state = {"running": {"startedAt": job.started}}
        else:
            state = {
                "terminated": {
                    "exitCode": job.exit_code,
                    "reason": job.term_reason,
                    "startedAt": job.started,
                    "finishedAt": job.finished,
                    **({"message": job.message} if job.message else {}),
                }
            }
        status = {
            "phase": job.phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": job.created,
            "conditions": [{"type": "Ready", "status": str(running), "lastTransitionTime": job.started or job.created}],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                    **({"containerID": f"standin://{job.proc.pid}"} if job.proc else {}),
                }
            ],
        }
        if job.pod_reason:
            status.update(reason=job.pod_reason, message=job.message or job.pod_reason)
        owner = (
            []
            if job.orphaned
            else [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "uid": job.uid,
                    "name": job.name,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        )
        meta = {
            **(job.template.get("metadata") or {}),
            "name": job.pod_name,
            "namespace": job.ns,
            "uid": job.pod_uid,
            "resourceVersion": str(self._rv),
            "labels": job.labels,
            "creationTimestamp": job.created,
            "ownerReferences": owner,
        }
        return {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": meta,
            "status": status,
            "spec": {**job.template["spec"], "nodeName": "standin"},
        }
