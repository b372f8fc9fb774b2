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

This module holds the API side: the HTTP server, the kubeconfig, request routing and
admission (validation), list selectors.  The Jobs, their Pods and the processes that
run them are kept by `JobController` in k8s_standin_jobs.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
from k8s_standin_jobs import DEADLINE, ApiError, JobController

__all__ = ["DEADLINE", "SCHEMA_VERSION", "ApiError", "KubeStandIn"]

SCHEMA_VERSION = "1.36"  # = kubernetes client 36.x; kubernetes_validate ships 1.25 .. 1.37


def _selector(text: str | None) -> list[tuple[str, str, str | None]]:
    """`a=b,c==d,e!=f,g,!h` -> [(op, key, value)]; set-based selectors -> 400."""
    terms = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        if "(" in term or " " in term:
            raise ApiError(400, "BadRequest", f"set-based selector not modelled: {text}")
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", term)
        terms.append(
            ("!=" if m[2] == "!=" else "=", m[1], m[3])
            if m
            else ("!", term[1:], None)
            if term.startswith("!")
            else ("has", term, None)
        )
    return terms


def _matches(terms, values: dict) -> bool:
    ops = {
        "=": lambda v, w: v == w,
        "!=": lambda v, w: v != w,
        "has": lambda v, w: v is not None,
        "!": lambda v, w: v is None,
    }
    return all(ops[op](values.get(key), want) for op, key, want in terms)


def _list(kind: str, objs: list[dict], query: dict) -> dict:
    labels, fields = (_selector(query.get(k)) for k in ("labelSelector", "fieldSelector"))
    known = ("metadata.name", "metadata.namespace", "status.phase")
    if any(k not in known for _, k, _ in fields):
        raise ApiError(400, "BadRequest", f"field selector not modelled: {fields}")
    items = [
        o
        for o in objs
        if _matches(labels, o["metadata"]["labels"])
        and _matches(
            fields,
            {
                "metadata.name": o["metadata"]["name"],
                "metadata.namespace": o["metadata"]["namespace"],
                "status.phase": o["status"].get("phase"),
            },
        )
    ]
    return {"kind": kind, "apiVersion": "v1" if kind == "PodList" else "batch/v1", "metadata": {}, "items": items}


class KubeStandIn(JobController):
    """`with KubeStandIn(base_env=..., secrets=..., config_maps=..., cwd=...) as k8s:`

    Attributes: `kubeconfig_path`, `context`, `url`, `jobs` (Job bodies as received,
    in order), `requests` ([(method, path)]), `unhandled` ([(method, path?query)]).
    Hooks: `kill(job, reason)`, `wait_for(job, timeout)`, `pod_log(job)`, `pod_name(job)`.
    """

    def __init__(
        self,
        base_env: dict | None = None,
        secrets: dict | None = None,
        config_maps: dict | None = None,
        cwd: str | os.PathLike | None = None,
        namespace: str | None = None,
        workdir: str | os.PathLike | None = None,
    ):
        """`base_env` defaults to PATH/HOME/LANG of this process.  `namespace` goes in
        the kubeconfig context (dagster_k8s then takes it as the current namespace and,
        if HOSTNAME is set, looks up its own pod there).  `workdir` keeps kubeconfig and
        pod logs; by default they go to a temporary dir removed on exit."""
        super().__init__(base_env, secrets, config_maps, cwd)
        self.namespace = namespace
        self._workdir_arg, self.context = workdir, "standin"
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []

    def __enter__(self) -> KubeStandIn:
        self.workdir = Path(self._workdir_arg or tempfile.mkdtemp(prefix="k8s-standin-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"k8s": self}))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        ctx = {"cluster": "standin", "user": "standin", **({"namespace": self.namespace} if self.namespace else {})}
        self.kubeconfig_path = str(self.workdir / "kubeconfig.json")  # JSON is YAML
        Path(self.kubeconfig_path).write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": self.context,
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "standin", "user": {}}],
                    "contexts": [{"name": self.context, "context": ctx}],
                },
                indent=1,
            )
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
        self._server.shutdown()
        self._server.server_close()
        if not self._workdir_arg:
            shutil.rmtree(self.workdir, ignore_errors=True)

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
            raise ApiError(
                422,
                "Invalid",
                f'Job.batch "{name}" is invalid: '
                + (
                    "metadata.name: Required value"
                    if not name
                    else f"the k8s stand-in runs exactly one container, not {n}"
                ),
            )
        return self._add_job(ns, body)

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
                    return 200, _list(
                        "JobList", [self._job_json(j) for (n, _), j in self._jobs.items() if n == ns], query
                    )
                job = self._jobs.get((ns, name))
                if job is None:
                    raise ApiError(404, "NotFound", f'jobs.batch "{name}" not found')
                if method == "GET":
                    return 200, self._job_json(job)
                cascade = (query.get("propagationPolicy") or (body or {}).get("propagationPolicy")) in (
                    "Background",
                    "Foreground",
                )
                self._delete_job(job, cascade)
            if cascade and job.watcher:
                job.watcher.join(timeout=10)  # the process is gone when DELETE returns
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": "batch", "kind": "jobs", "uid": job.uid},
            }
        if pods and (method == "GET" or (method == "DELETE" and pods[2] and not pods[3])):
            ns, name = pods[1], pods[2]
            with self._lock:
                if not name:
                    return 200, _list(
                        "PodList", [self._pod_json(j) for (n, _), j in self._pods.items() if n == ns], query
                    )
                job = self._pods.get((ns, name))
                if job is None:
                    raise ApiError(404, "NotFound", f'pods "{name}" not found')
                if method == "DELETE":
                    return 200, self._delete_pod(job)
                if not pods[3]:
                    return 200, self._pod_json(job)
                if job.proc is None:
                    why = (job.waiting or {}).get("reason", "ContainerCreating")
                    raise ApiError(
                        400,
                        "BadRequest",
                        f'container "{job.container["name"]}" in pod "{name}" is waiting to start: {why}',
                    )
            return 200, job.log()
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
