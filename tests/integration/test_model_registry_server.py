"""The model registry server (`cpp-dagster train registry`): a token unless told
--insecure-local, uploads streamed to disk under a size cap, socket timeouts, a bounded
pool of workers, and names that cannot leave the registry folder. A real server on a
loopback port, real HTTP clients."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest
from registry_clients import TOKEN, MiB, files_under, put

from cpp_dagster.training.registry import HttpModelRegistry, RegistryError
from cpp_dagster.training.registry_server import RegistryServerError, serve


@pytest.fixture
def registry(tmp_path):
    """A server on a free port over tmp_path/models; stopped after the test."""
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


def test_the_server_refuses_to_start_without_a_token_unless_insecure_local(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CPP_MODEL_REGISTRY_TOKEN"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cpp_dagster.cli",
            "train",
            "registry",
            "--root",
            str(tmp_path / "models"),
            "--port",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to serve the model registry without a token" in done.stderr
    assert "--insecure-local" in done.stderr
    with pytest.raises(RegistryServerError, match="without a token"):
        serve(tmp_path / "models", port=0, token=None, background=True)
    server = serve(tmp_path / "models", port=0, token=None, background=True, insecure_local=True)
    try:
        assert put(server.server_port, "/models/w/v1", token=None)[0] == 201
    finally:
        server.shutdown()
        server.server_close()


def test_requests_without_the_token_get_401_and_the_right_token_round_trips(registry, tmp_path):
    port = registry().server_port
    assert put(port, "/models/w/v1", token=None) == (401, {"error": "missing or wrong bearer token"})
    assert put(port, "/models/w/v1", token="wrong")[0] == 401
    with pytest.raises(RegistryError, match="401"):
        HttpModelRegistry(f"http://127.0.0.1:{port}").metadata("w", "v1")
    assert files_under(tmp_path / "models") == []
    client = HttpModelRegistry(f"http://127.0.0.1:{port}", token=TOKEN)
    model = tmp_path / "model.joblib"
    model.write_bytes(b"\x00model bytes" * 1000)
    client.publish("w", "v1", model, {"model_suffix": ".joblib"})
    assert client.metadata("w", "v1") == {"model_suffix": ".joblib"}
    assert client.fetch("w", "v1", tmp_path).read_bytes() == model.read_bytes()


def test_an_upload_over_the_cap_gets_413_and_nothing_is_stored(registry, tmp_path):
    port = registry(max_upload_bytes=4 * MiB).server_port
    status, answer = put(port, "/models/w/v1", length=5 * 1024**3)  # 5 GiB announced, never sent
    assert status == 413
    assert "at most 4,194,304" in answer["error"] and "CPP_MODEL_REGISTRY_MAX_UPLOAD_MB" in answer["error"]
    assert files_under(tmp_path / "models") == []


def test_an_upload_is_streamed_to_disk_not_held_in_memory(registry, tmp_path):
    port = registry(max_upload_bytes=64 * MiB).server_port
    size = 48 * MiB
    tracemalloc.start()
    try:
        status, _ = put(port, "/models/big/v1", _Zeros(size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 201
    assert (tmp_path / "models" / "big" / "v1" / "model.joblib").stat().st_size == size
    assert peak < 8 * MiB, f"the server held {peak / MiB:.1f} MiB for a {size // MiB} MiB upload"
    assert not [p for p in files_under(tmp_path / "models") if ".upload-" in p]


class _Zeros(io.RawIOBase):
    """A body of `size` zero bytes, produced as it is read (the client holds no copy)."""

    def __init__(self, size: int):
        self.left = size

    def __len__(self) -> int:
        return self.left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def test_a_stalled_client_times_out_and_does_not_block_the_others(registry, tmp_path):
    port = registry(timeout_s=1, workers=1).server_port
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(
        f"PUT /models/w/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 1000\r\n\r\n0123456789".encode()
    )
    started = time.monotonic()
    # the only worker is busy with the stalled upload: this request waits for its timeout
    client = HttpModelRegistry(f"http://127.0.0.1:{port}", token=TOKEN, timeout_s=30)
    with pytest.raises(RegistryError, match="404"):
        client.metadata("w", "v1")
    waited = time.monotonic() - started
    stalled.settimeout(10)
    answer = stalled.recv(65536).decode()
    stalled.close()
    assert answer.startswith("HTTP/1.0 408") and "stopped after 10 of 1,000 bytes" in answer
    assert 0.5 < waited < 10, f"the second client waited {waited:.1f} s"
    assert files_under(tmp_path / "models") == []


def test_an_upload_that_trickles_in_is_cut_off(registry, tmp_path):
    port = registry(timeout_s=1).server_port
    trickle = socket.create_connection(("127.0.0.1", port))
    trickle.sendall(
        f"PUT /models/w/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 1000\r\n\r\n".encode()
    )
    started, answer = time.monotonic(), b""
    trickle.settimeout(0.3)
    while not answer and time.monotonic() - started < 20:  # one byte every 0.3 s: never a full stall
        try:
            trickle.sendall(b"x")
            answer = trickle.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
    trickle.close()
    assert answer.startswith(b"HTTP/1.0 408"), answer
    assert time.monotonic() - started < 5
    assert files_under(tmp_path / "models") == []


@pytest.mark.parametrize(
    "path",
    [
        "/models/../v1",
        "/models/%2e%2e/v1",
        "/models/w/..",
        "/models/w%2F..%2F..%2Fx/v1",
        "/models/%00w/v1",
        "/models/w/%2Fetc",
    ],
)
def test_a_name_that_would_leave_the_registry_gets_400_and_nothing_is_written(registry, tmp_path, path):
    port = registry().server_port
    status, answer = put(port, path)
    assert status == 400, answer
    assert "model name" in answer["error"] or "model version" in answer["error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"] or not (tmp_path / "models").exists()
    assert files_under(tmp_path / "models") == []
