"""The model registry server against hostile or unlucky clients, and its client against a
hostile server: slowloris with no token, one client opening every connection, a version
named like the registry's own staging, a Content-Length that is no number, a full disk
(a real tmpfs of 256 KiB, mounted in a user and mount namespace of its own), a server
that drops the connection and one that redirects elsewhere. A real server on a loopback
port, real sockets. The basics (token, size cap, streaming, names): test_model_registry_server.py."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from registry_clients import TOKEN, MiB, files_under, put

from cpp_dagster.training.registry import HttpModelRegistry, RegistryError
from cpp_dagster.training.registry_server import serve


@pytest.fixture
def registry(tmp_path):
    servers = []

    def start(**kwargs):
        kwargs.setdefault("token", TOKEN)
        server = serve(tmp_path / "models", port=0, background=True, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def read_to_close(conn: socket.socket) -> str:
    """Everything the server sends until it closes the connection."""
    conn.settimeout(10)
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    conn.close()
    return answer.decode()


def slowloris(port: int, n: int, every: float, stop: threading.Event) -> list[socket.socket]:
    """`n` connections that send a request's headers one byte every `every` s, no token."""
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]

    def drip():
        line = b"GET /models/w/v1/metadata HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000
        for byte in line:
            if stop.wait(every):
                return
            for s in sockets:
                try:
                    s.send(bytes([byte]))
                except OSError:
                    pass

    threading.Thread(target=drip, daemon=True).start()
    return sockets


def test_slowloris_without_a_token_holds_no_worker_past_the_request_deadline(registry):
    """As many connections as the server has workers, dripping a byte every 0.2 s (each
    read well within the 1 s timeout, as one byte every 29 s is within 30 s): each is
    dropped at the 1 s deadline without an answer, and an honest client is served."""
    port = registry(timeout_s=1, workers=2, per_client=8).server_port
    stop = threading.Event()
    sockets = slowloris(port, 2, 0.2, stop)
    try:
        time.sleep(0.3)
        started = time.monotonic()
        client = HttpModelRegistry(f"http://127.0.0.1:{port}", token=TOKEN, timeout_s=30)
        with pytest.raises(RegistryError, match="404"):
            client.metadata("w", "v1")  # served: no such model
        assert time.monotonic() - started < 4
        for s in sockets:  # each was closed by the server without an answer
            s.settimeout(5)
            assert s.recv(100) == b""
    finally:
        stop.set()
        for s in sockets:
            s.close()


def test_one_client_cannot_take_every_worker(registry):
    port = registry(timeout_s=30, workers=4, per_client=2).server_port
    stop = threading.Event()
    held = slowloris(port, 2, 1, stop)
    try:
        time.sleep(0.3)
        third = socket.create_connection(("127.0.0.1", port))
        answer = read_to_close(third)
        assert answer.startswith("HTTP/1.0 429") and "at most 2 connections at once from one client" in answer
    finally:
        stop.set()
        for s in held:
            s.close()
    # once they are gone (the server sees them close), the same client is served again
    client = HttpModelRegistry(f"http://127.0.0.1:{port}", token=TOKEN, timeout_s=30)
    deadline = time.monotonic() + 10
    while True:
        with pytest.raises(RegistryError) as answered:
            client.metadata("w", "v1")
        if "404" in str(answered.value) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "404" in str(answered.value)


class _Endless:
    """A body that must never be read: the name is refused first."""

    def read(self, n: int = -1) -> bytes:
        raise AssertionError("the body was read")


@pytest.mark.parametrize(
    "path, says",
    [
        ("/models/w/.v1.replaced", "model version '.v1.replaced'"),
        ("/models/w/.upload-x", "model version '.upload-x'"),
        ("/models/.hidden/v1", "model name '.hidden'"),
        ("/models/w/" + "v" * 81, "must be 1-80"),
        ("/models/w/v%201", "model version 'v 1'"),
    ],
)
def test_the_name_rule_answers_before_the_body_is_read(registry, tmp_path, path, says):
    port = registry(max_upload_bytes=2 * MiB).server_port
    started = time.monotonic()
    status, answer = put(port, path, length=MiB)  # headers only: the 1 MiB body never comes
    assert status == 400 and says in answer["error"], answer
    assert time.monotonic() - started < 5
    assert files_under(tmp_path / "models") == []


@pytest.mark.parametrize("length", ["²", "١٢", "1e3", "-5", "9" * 5000, "12, 12"])
def test_a_content_length_that_is_no_number_gets_400(registry, tmp_path, length):
    port = registry().server_port
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(
        f"PUT /models/w/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    answer = read_to_close(conn)
    assert answer.startswith("HTTP/1.0 400") and "is not a number of bytes" in answer, answer
    assert files_under(tmp_path / "models") == []


DISK_FULL_SERVER = """
import json, sys, time, pathlib
from cpp_dagster.training.registry_server import serve
root = pathlib.Path(sys.argv[1]) / "models"
server = serve(root, port=0, token=sys.argv[2], background=True)
print(server.server_port, flush=True)
sys.stdin.readline()  # the test's uploads are done
print(json.dumps(sorted(str(p.relative_to(root)) for p in root.rglob("*"))), flush=True)
"""


def tiny_disk_server(folder: Path):
    """The registry server over a 256 KiB tmpfs in a user+mount namespace of its own."""
    if not shutil.which("unshare"):
        pytest.fail("util-linux's unshare is needed to give the server a small disk")
    mount_then_serve = 'mount -t tmpfs -o size=256k tmpfs "$1" && exec "$0" -c "$2" "$1" "$3"'
    return subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", mount_then_serve, sys.executable, str(folder), DISK_FULL_SERVER, TOKEN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


@pytest.mark.parametrize("size", [200 * 1024, 600 * 1024], ids=["full-while-publishing", "full-while-uploading"])
def test_a_full_disk_is_507_and_leaves_no_staging(tmp_path, size):
    folder = tmp_path / "disk"
    folder.mkdir()
    server = tiny_disk_server(folder)
    try:
        line = server.stdout.readline()
        assert line.strip().isdigit(), server.stderr.read()
        status, answer = put(int(line), "/models/w/v1", b"m" * size)
        assert status == 507, answer
        assert "the registry's disk is full: nothing was stored" in answer["error"]
        small = put(int(line), "/models/w/v2", b"m" * 1024)  # once there is room, an upload works
        assert small[0] == 201, small
        left, _ = server.communicate("done\n", timeout=30)
    finally:
        server.kill()
    assert json.loads(left) == ["w", "w/v2", "w/v2/metadata.json", "w/v2/model.joblib"]


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A model service that drops the connection, or redirects to `elsewhere`."""

    elsewhere = ""
    seen: list[dict] = []

    def log_message(self, *args):
        return

    def do_GET(self):  # noqa: N802
        type(self).seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        if self.path.startswith("/drop"):
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path.startswith("/half"):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"{")
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", f"{self.elsewhere}/models/w/v1/metadata")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile():
    servers = []

    def start() -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    _Hostile.seen = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("where", ["/drop", "/half"])
def test_a_dropped_connection_is_a_clear_registry_error(hostile, where):
    client = HttpModelRegistry(hostile() + where, token=TOKEN, timeout_s=10)
    with pytest.raises(RegistryError, match="the connection was lost before a whole answer came"):
        client.metadata("w", "v1")


def test_the_token_is_never_sent_to_the_host_a_redirect_names(hostile):
    service, elsewhere = hostile(), hostile()
    _Hostile.elsewhere = elsewhere.replace("127.0.0.1", "localhost")  # another host
    client = HttpModelRegistry(service + "/redirect", token=TOKEN, timeout_s=10)
    client.metadata("w", "v1")
    first, followed = _Hostile.seen
    assert first["authorization"] == f"Bearer {TOKEN}"
    assert followed["path"] == "/models/w/v1/metadata" and followed["authorization"] is None
