"""A small model registry the project runs: a folder registry served over the HTTP
interface of registry.HttpModelRegistry (`cpp-dagster train registry`).

- Every request carries the bearer token (CPP_MODEL_REGISTRY_TOKEN). Without a token the
  server refuses to start unless told `insecure_local` (`--insecure-local`: a laptop, not
  a shared network).
- An upload is streamed to a temporary file beside the registry folder, never held in
  memory, and refused with 413 above `max_upload_bytes` (CPP_MODEL_REGISTRY_MAX_UPLOAD_MB)
  before its body is read; a body that stops short of its Content-Length is not stored.
- Every request has a total deadline, not only a timeout per read: its request line and
  headers must arrive within `timeout_s` (a client sending a byte every few seconds is
  dropped; no token is needed to try, since the token is read with the headers), and
  its body within `timeout_s` plus its length at MIN_UPLOAD_RATE.
- Requests are served by a bounded pool of `workers` threads; while all are busy, new
  connections wait in the listen backlog instead of each getting a thread. One client
  address holds at most `per_client` connections: the next gets 429 at once, so no
  single client can take every worker.
- Model names and versions follow the project's path rule (`cpp_dagster.paths`) and the
  registry's name rule, checked before the body is read: `..`, separators, control
  characters, a leading dot are a 400 and nothing is touched.
- A malformed Content-Length (`²`, thousands of digits) is a 400; a full disk a 507, with
  the upload's staging removed.
"""

from __future__ import annotations

import errno
import hmac
import io
import json
import math
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import unquote

from cpp_dagster import paths
from cpp_dagster.service_settings import Registry
from cpp_dagster.training.registry import FolderModelRegistry, RegistryError, check_name_and_version

CHUNK = 1024 * 1024
MIN_UPLOAD_RATE = 64 * 1024  # bytes/s an upload must keep up on average (after timeout_s of grace)
UPLOAD_PREFIX = ".upload-"
CONTENT_LENGTH = re.compile(r"^[0-9]{1,18}$")  # ASCII digits only: "²".isdigit() is True
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class RegistryServerError(RuntimeError):
    """The server cannot start as asked (e.g. no token and not --insecure-local)."""


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class BoundedThreadPoolHTTPServer(HTTPServer):
    """HTTPServer whose requests run on a fixed pool of threads. The accept loop waits
    for a free worker, so at most `workers` connections are served at once, and at most
    `per_client` from one client address (the next is answered 429 and closed)."""

    def __init__(self, address, handler, workers: int, per_client: int):
        super().__init__(address, handler)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="registry")
        self._free = threading.BoundedSemaphore(workers)
        self._per_client, self._clients, self._lock = per_client, Counter(), threading.Lock()

    def process_request(self, request, client_address):
        host = client_address[0]
        with self._lock:
            admitted = self._clients[host] < self._per_client
            if admitted:
                self._clients[host] += 1
        if not admitted:
            self._too_many(request)
            return
        self._free.acquire()
        self._pool.submit(self._work, request, client_address)

    def _too_many(self, request) -> None:
        body = json.dumps({"error": f"at most {self._per_client} connections at once from one client"}).encode()
        try:
            request.settimeout(1)
            request.sendall(
                b"HTTP/1.0 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        except OSError:
            pass
        self.shutdown_request(request)

    def _work(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 (socketserver's own contract: report and go on)
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._clients[client_address[0]] -= 1
                if self._clients[client_address[0]] <= 0:
                    del self._clients[client_address[0]]
            self._free.release()

    def server_close(self):
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class DeadlineReader(io.RawIOBase):
    """A connection's reads, each waiting at most `stall_s` and never past `deadline`
    (monotonic time), so a request has a total deadline however its bytes trickle in."""

    def __init__(self, connection: socket.socket, stall_s: float):
        self.connection, self.stall_s, self.deadline = connection, stall_s, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self.connection.settimeout(min(left, self.stall_s))
        return self.connection.recv_into(buffer)


def _handler(registry: FolderModelRegistry, token: str | None, max_upload: int, timeout_s: float):
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # StreamRequestHandler sets it on the socket: every read and write

        def log_message(self, fmt, *args):  # no request log lines on stderr
            return

        def setup(self):
            super().setup()
            self.reader = DeadlineReader(self.connection, timeout_s)
            self.rfile = io.BufferedReader(self.reader)

        def handle_one_request(self):
            # the request line and headers (the token among them) within timeout_s in all
            self.reader.deadline = time.monotonic() + timeout_s
            super().handle_one_request()

        def _reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, message: str) -> None:
            self._reply(code, json.dumps({"error": message}).encode())

        def _route(self) -> tuple[str, str, bool]:
            if token is not None and not hmac.compare_digest(
                self.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()
            ):
                raise _Refused(401, "missing or wrong bearer token")
            parts = [unquote(p) for p in self.path.split("?", 1)[0].strip("/").split("/")]
            if not (len(parts) in (3, 4) and parts[0] == "models" and (len(parts) == 3 or parts[3] == "metadata")):
                raise _Refused(404, f"no such resource {self.path}")
            try:  # before any body is read
                check_name_and_version(parts[1], parts[2])
            except RegistryError as error:
                self.close_connection = True  # the body is not read: do not reuse the connection
                raise _Refused(400, str(error)) from None
            return parts[1], parts[2], len(parts) == 4

        def _serve(self, method) -> None:
            try:
                method(*self._route())
            except _Refused as refused:
                self._error(refused.code, str(refused))
            except RegistryError as error:
                self._error(404 if self.command == "GET" else 400, str(error))
            except OSError as error:
                if error.errno not in DISK_FULL:
                    raise
                self.close_connection = True
                self._error(507, "the registry's disk is full: nothing was stored; try again once there is room")

        def do_PUT(self):  # noqa: N802 (http.server's naming)
            self._serve(self._put)

        def do_GET(self):  # noqa: N802
            self._serve(self._get)

        def _put(self, name: str, version: str, is_metadata: bool) -> None:
            if is_metadata:
                raise _Refused(405, "the metadata travels with the model: PUT /models/NAME/VERSION")
            length = self._content_length()
            try:
                metadata = json.loads(self.headers.get("X-Model-Metadata", "{}"))
                filename = paths.component(self.headers.get("X-Model-Filename", "model.bin"), "model file name")
            except (json.JSONDecodeError, paths.UnsafePathError) as error:
                self.close_connection = True  # the body is not read: do not reuse the connection
                raise _Refused(400, f"bad upload headers: {error}") from None
            registry.root.mkdir(parents=True, exist_ok=True)
            self.reader.deadline = time.monotonic() + timeout_s + length / MIN_UPLOAD_RATE
            with tempfile.TemporaryDirectory(
                prefix=UPLOAD_PREFIX, dir=registry.root, ignore_cleanup_errors=True
            ) as tmp:
                upload = Path(tmp) / filename
                self._receive(upload, length)
                location = registry.publish(name, version, upload, metadata)
            self._reply(201, json.dumps({"name": name, "version": version, "location": location}).encode())

        def _content_length(self) -> int:
            raw = self.headers.get("Content-Length")
            if raw is None or self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise _Refused(411, "PUT /models/NAME/VERSION with the model file as the body and its Content-Length")
            if len(self.headers.get_all("Content-Length")) > 1 or not CONTENT_LENGTH.match(raw.strip()):
                self.close_connection = True
                raise _Refused(400, f"Content-Length {raw[:40]!r} is not a number of bytes")
            if int(raw) == 0:
                self.close_connection = True
                raise _Refused(411, "PUT /models/NAME/VERSION with the model file as the body and its Content-Length")
            if int(raw) > max_upload:
                self.close_connection = True  # refused before the body is read
                raise _Refused(
                    413,
                    f"the model is {int(raw):,} bytes; this registry takes at most "
                    f"{max_upload:,} (CPP_MODEL_REGISTRY_MAX_UPLOAD_MB)",
                )
            return int(raw)

        def _receive(self, upload: Path, length: int) -> None:
            """Stream the body to `upload` in chunks. A body that stops (no data for
            timeout_s, or the connection closed) or trickles in slower than
            MIN_UPLOAD_RATE is refused, so no client holds a worker for long."""
            left = length
            deadline = time.monotonic() + timeout_s + length / MIN_UPLOAD_RATE
            with upload.open("wb") as out:
                while left:
                    try:
                        chunk = self.rfile.read1(min(CHUNK, left))  # what has arrived, at most this
                    except TimeoutError:
                        chunk = b""
                    if not chunk or time.monotonic() > deadline:
                        self.close_connection = True
                        raise _Refused(
                            408,
                            f"the upload stopped after {length - left + len(chunk):,} of "
                            f"{length:,} bytes (no data for {timeout_s:g} s, slower than "
                            f"{MIN_UPLOAD_RATE // 1024} KiB/s, or the connection closed)",
                        )
                    out.write(chunk)
                    left -= len(chunk)

        def _get(self, name: str, version: str, is_metadata: bool) -> None:
            if is_metadata:
                self._reply(200, json.dumps(registry.metadata(name, version)).encode())
                return
            model = registry.model_file(name, version)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(model.stat().st_size))
            self.end_headers()
            with model.open("rb") as source:
                shutil.copyfileobj(source, self.wfile, CHUNK)

    return Handler


def serve(
    root: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    background: bool = False,
    *,
    insecure_local: bool = False,
    max_upload_bytes: int = Registry().max_upload_bytes,  # the setting's default
    timeout_s: float = 30,
    workers: int = 8,
    per_client: int = 4,
    on_ready=None,
) -> HTTPServer:
    """Serve the folder registry at `root` with `workers` threads, at most `per_client`
    connections per client address. Without `token` it refuses to start unless
    `insecure_local`. In the background it returns the running server (call
    `shutdown()` and `server_close()` to stop it)."""
    if not token and not insecure_local:
        raise RegistryServerError(
            "refusing to serve the model registry without a token: set CPP_MODEL_REGISTRY_TOKEN "
            "(clients send it as a bearer token), or pass --insecure-local for a local, single-user run"
        )
    handler = _handler(
        FolderModelRegistry(root),
        token or None,
        max_upload_bytes,
        timeout_s,
    )
    server = BoundedThreadPoolHTTPServer((host, port), handler, workers, per_client)
    if on_ready is not None:
        on_ready()
    if background:
        threading.Thread(target=server.serve_forever, daemon=True, name="registry-accept").start()
    else:
        server.serve_forever()
    return server
