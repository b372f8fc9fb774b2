"""A local stand-in for the Kubernetes API: Jobs run as local processes.

`KubeStandIn` serves a small part of the Kubernetes REST API over plain HTTP on
127.0.0.1, so that the official `kubernetes` Python client -- and dagster_k8s's
`DagsterKubernetesClient`, `K8sRunLauncher` and `k8s_job_executor` on top of it --
can create Jobs and follow them without a cluster.

What it models
  * batch/v1 Jobs: create (validated by `kubernetes_validate`, strict, against
    SCHEMA_VERSION: 422 Invalid; 409 AlreadyExists), get, get /status, list, delete.
    DELETE honours propagationPolicy like the real API: Background/Foreground delete
    (and kill) the Pod too; without one, batch/v1 orphans the Pod, which runs on
    until it is deleted itself (which is why dagster_k8s deletes the pods as well).
  * core/v1 Pods: one Pod `<job>-<5 chars>` per Job, labelled as the Job controller
    does (`job-name`, `controller-uid` and their `batch.kubernetes.io/` forms); get,
    list, delete (kills the process; the Job fails), /log (stdout+stderr).  Lists
    honour labelSelector (`a=b`, `a==b`, `a!=b`, `a`, `!a`) and fieldSelector on
    metadata.name/metadata.namespace/status.phase.  core/v1 Events: always empty.
  * The single container runs as a local process in a new session (process group):
    argv = command + args (image and entrypoint ignored), the executable found on
    the pod env's PATH; env = `base_env` + HOSTNAME=<pod> + envFrom (secretRef,
    configMapRef, prefix) + env (value, secretKeyRef, configMapKeyRef, fieldRef);
    cwd = workingDir or `cwd`.  A missing secret/config map/key (not `optional`)
    fails Pod and Job with CreateContainerConfigError (real Kubernetes leaves the
    Pod Pending; failing fast keeps tests from hanging).  Executable not found ->
    terminated StartError, exit code 128.  When the main process exits the rest of
    its group is killed, as when a container ends.  Signal N -> exit code 128+N.
  * `spec.activeDeadlineSeconds`: SIGKILL at the deadline, Job Failed/DeadlineExceeded.
  * backoffLimit 0 semantics whatever the spec says: one Pod, never restarted
    (completions/parallelism ignored).  Job status: active -> succeeded or failed,
    with one Complete or Failed condition (no SuccessCriteriaMet/FailureTarget).

What it does NOT model
  scheduling, nodes and node selection, image pulls, resource requests/limits
  (nothing enforced; `kill(job, reason="OOMKilled")` fakes an OOM kill), volumes and
  volumeMounts, init/sidecar containers, `$(VAR)` expansion, probes, grace periods
  (every kill is SIGKILL), evictions, restarts, TTL after finish, RBAC and auth (no
  credentials needed or checked), watches, PATCH/PUT, events, resourceVersion
  semantics beyond a counter.  Secrets and config maps are plain {name: {key: str}}
  dicts (no base64).  Processes that leave their process group escape the kills.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate

SCHEMA_VERSION = "1.36"  # = kubernetes client 36.x; kubernetes_validate ships 1.25 .. 1.37
DEADLINE = "DeadlineExceeded"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "reason": reason, "code": code, "message": message}


class _ConfigError(Exception):
    """The container's env cannot be built (CreateContainerConfigError)."""


def _selector(text: str | None) -> list[tuple[str, str, str | None]]:
    """`a=b,c==d,e!=f,g,!h` -> [(op, key, value)]; set-based selectors -> 400."""
    terms = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        if "(" in term or " " in term:
            raise ApiError(400, "BadRequest", f"set-based selector not modelled: {text}")
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", term)
        terms.append(("!=" if m[2] == "!=" else "=", m[1], m[3]) if m else
                     ("!", term[1:], None) if term.startswith("!") else ("has", term, None))
    return terms


def _matches(terms, values: dict) -> bool:
    ops = {"=": lambda v, w: v == w, "!=": lambda v, w: v != w,
           "has": lambda v, w: v is not None, "!": lambda v, w: v is None}
    return all(ops[op](values.get(key), want) for op, key, want in terms)


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
        self.labels = {**(self.template.get("metadata") or {}).get("labels", {}),
                       "job-name": self.name, "controller-uid": self.uid,
                       "batch.kubernetes.io/job-name": self.name,
                       "batch.kubernetes.io/controller-uid": self.uid}
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


class KubeStandIn:
    """`with KubeStandIn(base_env=..., secrets=..., config_maps=..., cwd=...) as k8s:`

    Attributes: `kubeconfig_path`, `context`, `url`, `jobs` (Job bodies as received,
    in order), `requests` ([(method, path)]), `unhandled` ([(method, path?query)]).
    Hooks: `kill(job, reason)`, `wait_for(job, timeout)`, `pod_log(job)`, `pod_name(job)`.
    """

    def __init__(self, base_env: dict | None = None, secrets: dict | None = None,
                 config_maps: dict | None = None, cwd: str | os.PathLike | None = None,
                 namespace: str | None = None, workdir: str | os.PathLike | None = None):
        """`base_env` defaults to PATH/HOME/LANG of this process.  `namespace` goes in
        the kubeconfig context (dagster_k8s then takes it as the current namespace and,
        if HOSTNAME is set, looks up its own pod there).  `workdir` keeps kubeconfig and
        pod logs; by default they go to a temporary dir removed on exit."""
        self.base_env = dict(base_env) if base_env is not None else {
            k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        self.secrets, self.config_maps = dict(secrets or {}), dict(config_maps or {})
        self.cwd, self.namespace = str(cwd or os.getcwd()), namespace
        self._workdir_arg, self.context = workdir, "standin"
        self.jobs: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._jobs: dict[tuple[str, str], _Job] = {}  # by (namespace, job name)
        self._pods: dict[tuple[str, str], _Job] = {}  # by (namespace, pod name)
        self._history: list[_Job] = []  # every Job ever created, for the hooks
        self._lock = threading.Condition()
        self._rv = 0

    def __enter__(self) -> KubeStandIn:
        self.workdir = Path(self._workdir_arg or tempfile.mkdtemp(prefix="k8s-standin-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"k8s": self}))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        ctx = {"cluster": "standin", "user": "standin",
               **({"namespace": self.namespace} if self.namespace else {})}
        self.kubeconfig_path = str(self.workdir / "kubeconfig.json")  # JSON is YAML
        Path(self.kubeconfig_path).write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": self.context,
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [{"name": self.context, "context": ctx}]}, indent=1))
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            for job in self._history:
                self._kill(job, "Error")
        for job in self._history:
            if job.watcher:
                job.watcher.join(timeout=10)
        self._server.shutdown()
        self._server.server_close()
        if not self._workdir_arg:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- hooks for tests (they also find deleted Jobs) ----------------------------
    def _find(self, job_name: str, namespace: str | None) -> _Job:
        for job in reversed(self._history):
            if job.name == job_name and namespace in (None, job.ns):
                return job
        raise KeyError(f"no job {job_name!r}")

    def kill(self, job_name: str, reason: str = "OOMKilled", namespace: str | None = None) -> None:
        """SIGKILL the Job's process group; its container terminates with `reason`."""
        with self._lock:
            self._kill(self._find(job_name, namespace), reason)

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
            path = self._find(job_name, namespace).log_path
        return path.read_text(errors="replace") if path.is_file() else ""

    # ---- state changes (with the lock held) ---------------------------------------
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

    def _finish(self, job: _Job, code: int | None, reason: str, message: str | None = None,
                waiting: bool = False) -> None:
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
            job.status = {**base, "succeeded": 1, "completionTime": job.finished,
                          "conditions": [{"type": "Complete", **cond}]}
        else:
            why, msg = ((DEADLINE, "Job was active longer than specified deadline")
                        if job.kill_reason == DEADLINE else (reason, message) if waiting else
                        ("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
            job.status = {**base, "failed": 1,
                          "conditions": [{"type": "Failed", "reason": why, "message": msg, **cond}]}
        self._rv += 1
        self._lock.notify_all()

    def _deadline(self, job: _Job) -> None:
        with self._lock:
            self._kill(job, DEADLINE)

    # ---- the container ------------------------------------------------------------
    def _env(self, job: _Job) -> dict:
        def lookup(store, kind, ref, key=None):
            data = store.get(ref.get("name"))
            if data is None or (key is not None and key not in data):
                if ref.get("optional"):
                    return None
                raise _ConfigError(f'{kind} "{ref.get("name")}" not found' if data is None else
                                   f"couldn't find key {key} in {kind} {job.ns}/{ref['name']}")
            return data if key is None else data[key]

        fields = {"metadata.name": job.pod_name, "metadata.namespace": job.ns,
                  "metadata.uid": job.pod_uid, "spec.nodeName": "standin",
                  "spec.serviceAccountName": job.template["spec"].get("serviceAccountName",
                                                                      "default"),
                  "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
        env, c = {**self.base_env, "HOSTNAME": job.pod_name}, job.container
        for src in c.get("envFrom") or []:
            data = (lookup(self.secrets, "secret", src["secretRef"]) if "secretRef" in src else
                    lookup(self.config_maps, "configmap", src.get("configMapRef", {})))
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
                return self._finish(job, 128, "StartError",
                                    f"exec: {argv[:1]}: executable file not found in $PATH")
            with open(job.log_path, "wb") as log:
                job.proc = subprocess.Popen(
                    [exe, *argv[1:]], env=env, cwd=job.container.get("workingDir") or self.cwd,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            job.phase, job.started, job.waiting = "Running", _now(), None
            self._rv += 1
        os.waitid(os.P_PID, job.proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        with self._lock:
            try:  # the container is over: so is everything else in it
                os.killpg(job.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc, job.reaped = job.proc.wait(), True
            self._finish(job, rc if rc >= 0 else 128 - rc,
                         job.kill_reason or ("Completed" if rc == 0 else "Error"))

    # ---- the API ------------------------------------------------------------------
    def _create_job(self, ns: str, body: dict) -> dict:
        if body.get("kind") != "Job" or body.get("apiVersion") != "batch/v1":
            raise ApiError(400, "BadRequest", "expected kind Job, apiVersion batch/v1")
        name = (body.get("metadata") or {}).get("name") or ""
        try:
            kubernetes_validate.validate(body, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "<root>"
            raise ApiError(422, "Invalid", f'Job.batch "{name}" is invalid: {where}: {e.message}') from None
        n = len(body["spec"]["template"]["spec"]["containers"])
        if not name or n != 1:  # (generateName is not modelled)
            raise ApiError(422, "Invalid", f'Job.batch "{name}" is invalid: ' + (
                "metadata.name: Required value" if not name else
                f"the k8s stand-in runs exactly one container, not {n}"))
        with self._lock:
            if (ns, name) in self._jobs:
                raise ApiError(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            self.jobs.append(json.loads(json.dumps(body)))
            job = self._jobs[ns, name] = _Job(ns, body, self.workdir)
            self._pods[ns, job.pod_name] = job
            self._history.append(job)
            if body["spec"].get("activeDeadlineSeconds"):
                job.timer = threading.Timer(body["spec"]["activeDeadlineSeconds"],
                                            self._deadline, (job,))
                job.timer.daemon = True
                job.timer.start()
            job.watcher = threading.Thread(target=self._run, args=(job,), daemon=True)
            job.watcher.start()
            self._rv += 1
            return self._job_json(job)

    def _job_json(self, job: _Job) -> dict:
        meta = {**job.body["metadata"], "namespace": job.ns, "uid": job.uid, "generation": 1,
                "resourceVersion": str(self._rv), "creationTimestamp": job.created,
                "labels": job.body["metadata"].get("labels") or {}}
        spec = {"parallelism": 1, "completions": 1, **job.body["spec"],
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": job.uid}}}
        return {"kind": "Job", "apiVersion": "batch/v1", "metadata": meta, "spec": spec,
                "status": dict(job.status)}

    def _pod_json(self, job: _Job) -> dict:
        c, running = job.container, job.phase == "Running"
        if job.waiting:
            state = {"waiting": {k: v for k, v in job.waiting.items() if v}}
        elif running:
            state = {"running": {"startedAt": job.started}}
        else:
            state = {"terminated": {"exitCode": job.exit_code, "reason": job.term_reason,
                                    "startedAt": job.started, "finishedAt": job.finished,
                                    **({"message": job.message} if job.message else {})}}
        status = {"phase": job.phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                  "startTime": job.created,
                  "conditions": [{"type": "Ready", "status": str(running),
                                  "lastTransitionTime": job.started or job.created}],
                  "containerStatuses": [{
                      "name": c["name"], "image": c["image"], "imageID": "", "ready": running,
                      "started": running, "restartCount": 0, "state": state,
                      **({"containerID": f"standin://{job.proc.pid}"} if job.proc else {})}]}
        if job.pod_reason:
            status.update(reason=job.pod_reason, message=job.message or job.pod_reason)
        owner = [] if job.orphaned else [{"apiVersion": "batch/v1", "kind": "Job", "uid": job.uid,
                                          "name": job.name, "controller": True,
                                          "blockOwnerDeletion": True}]
        meta = {**(job.template.get("metadata") or {}), "name": job.pod_name, "namespace": job.ns,
                "uid": job.pod_uid, "resourceVersion": str(self._rv), "labels": job.labels,
                "creationTimestamp": job.created, "ownerReferences": owner}
        return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "status": status,
                "spec": {**job.template["spec"], "nodeName": "standin"}}

    @staticmethod
    def _list(kind: str, objs: list[dict], query: dict) -> dict:
        labels, fields = (_selector(query.get(k)) for k in ("labelSelector", "fieldSelector"))
        known = ("metadata.name", "metadata.namespace", "status.phase")
        if any(k not in known for _, k, _ in fields):
            raise ApiError(400, "BadRequest", f"field selector not modelled: {fields}")
        items = [o for o in objs if _matches(labels, o["metadata"]["labels"]) and _matches(
            fields, {"metadata.name": o["metadata"]["name"],
                     "metadata.namespace": o["metadata"]["namespace"],
                     "status.phase": o["status"].get("phase")})]
        return {"kind": kind, "apiVersion": "v1" if kind == "PodList" else "batch/v1",
                "metadata": {}, "items": items}

    def handle(self, method: str, path: str, query: dict, body: dict | None):
        """Route one request: returns (HTTP code, JSON dict or text) or raises ApiError."""
        if query.get("watch") in ("true", "1"):
            raise ApiError(400, "BadRequest", "watches are not modelled by the k8s stand-in")
        jobs = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+)(/status)?)?", path)
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?", path)
        if method == "POST" and jobs and not jobs[2]:
            return 201, self._create_job(jobs[1], body or {})
        if method == "GET" and re.fullmatch(r"/api/v1/namespaces/[^/]+/events", path):
            return 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": []}
        if jobs and (method == "GET" or (method == "DELETE" and jobs[2] and not jobs[3])):
            ns, name = jobs[1], jobs[2]
            with self._lock:
                if not name:
                    return 200, self._list("JobList", [self._job_json(j) for (n, _), j in
                                                       self._jobs.items() if n == ns], query)
                job = self._jobs.get((ns, name))
                if job is None:
                    raise ApiError(404, "NotFound", f'jobs.batch "{name}" not found')
                if method == "GET":
                    return 200, self._job_json(job)
                del self._jobs[ns, name]
                if job.timer:
                    job.timer.cancel()
                cascade = (query.get("propagationPolicy") or (body or {}).get(
                    "propagationPolicy")) in ("Background", "Foreground")
                if cascade:
                    self._pods.pop((ns, job.pod_name), None)
                    self._kill(job, "Error")
                else:  # batch/v1's default is to orphan the pods (they run on)
                    job.orphaned = True
                self._rv += 1
            if cascade and job.watcher:
                job.watcher.join(timeout=10)  # the process is gone when DELETE returns
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Success", "details": {"name": name, "group": "batch",
                                                          "kind": "jobs", "uid": job.uid}}
        if pods and (method == "GET" or (method == "DELETE" and pods[2] and not pods[3])):
            ns, name = pods[1], pods[2]
            with self._lock:
                if not name:
                    return 200, self._list("PodList", [self._pod_json(j) for (n, _), j in
                                                       self._pods.items() if n == ns], query)
                job = self._pods.get((ns, name))
                if job is None:
                    raise ApiError(404, "NotFound", f'pods "{name}" not found')
                if method == "DELETE":
                    del self._pods[ns, name]
                    self._kill(job, "Error")
                    out = self._pod_json(job)
                    out["metadata"]["deletionTimestamp"] = _now()
                    return 200, out
                if not pods[3]:
                    return 200, self._pod_json(job)
                if job.proc is None:
                    why = (job.waiting or {}).get("reason", "ContainerCreating")
                    raise ApiError(400, "BadRequest", f'container "{job.container["name"]}" '
                                                      f'in pod "{name}" is waiting to start: {why}')
            return 200, job.log_path.read_text(errors="replace") if job.log_path.is_file() else ""
        self.unhandled.append((method, path + (f"?{query['?']}" if query.get("?") else "")))
        raise ApiError(404, "NotFound", f"{method} {path} is not modelled by the k8s stand-in")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3 expects: always a Content-Length
    k8s: KubeStandIn

    def log_message(self, *args) -> None:
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()} | {"?": url.query}
        self.k8s.requests.append((self.command, url.path))
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError as e:
                raise ApiError(400, "BadRequest", f"request body is not JSON: {e}") from None
            code, out = self.k8s.handle(self.command, url.path, query, body)
        except ApiError as e:
            code, out = e.body["code"], e.body
        except Exception as e:  # a bug in the stand-in: say so rather than hang the client
            code, out = 500, ApiError(500, "InternalError", f"k8s stand-in: {e!r}").body
        data = (out if isinstance(out, str) else json.dumps(out)).encode()
        self.send_response(code)
        kind = "text/plain" if isinstance(out, str) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve
