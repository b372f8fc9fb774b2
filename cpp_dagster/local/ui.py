"""`make dev` / `cpp-dagster dev`: the Dagster UI (webserver + daemon) over the local
instance, announced by the URL a lab member starts from: the asset graph."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Callable
from pathlib import Path

# The global asset graph of Dagster 1.13's UI (the `/asset-groups` route).
ASSET_GRAPH_PATH = "/asset-groups"


def base_url(host: str, port: int) -> str:
    return f"http://{host}:{port}"


def asset_graph_url(host: str, port: int) -> str:
    return base_url(host, port) + ASSET_GRAPH_PATH


def ui_answers(url: str) -> bool:
    """Whether a Dagster webserver answers at `url` (its `/server_info`)."""
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            json.load(response)
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def can_open_browser() -> bool:
    """A browser a person sees: a desktop session (or macOS) and one that webbrowser knows."""
    if sys.platform != "darwin" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
        return True
    except webbrowser.Error:
        return False


def run_dev(
    workspace: Path,
    host: str,
    port: int,
    env: dict[str, str],
    *,
    open_browser: bool,
    echo: Callable[[str], None],
    timeout_s: float = 300,
) -> int:
    """`dagster dev` over `workspace` until it exits (Ctrl-C or SIGTERM stop it and its
    webserver and daemon); once the UI answers, print the asset graph's URL and open it
    when asked and a browser exists. Returns dagster dev's exit code."""
    url = asset_graph_url(host, port)
    exe = str(Path(sys.executable).with_name("dagster"))
    echo(f"starting the Dagster UI (webserver + daemon, DAGSTER_HOME={env['DAGSTER_HOME']}) ...")
    proc = subprocess.Popen(
        [exe, "dev", "-w", str(workspace), "-h", host, "-p", str(port)], cwd=workspace.parent, env=env
    )
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and not ui_answers(base_url(host, port)):
            if time.monotonic() > deadline:
                echo(f"the Dagster UI did not answer on {base_url(host, port)} within {timeout_s:.0f} s")
                break
            time.sleep(1)
        else:
            if proc.poll() is None:
                echo(f"Dagster UI: {url} (the asset graph)")
                if open_browser and can_open_browser():
                    webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached dagster dev too: let it stop its processes
        return proc.wait(60)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            stop(proc, grace_s=60)


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """Stop `dagster dev` (SIGTERM: it stops its webserver, daemon and code server) and
    make sure nothing it started outlives it: a process of its tree still there after
    `grace_s` (a daemon still loading the code location on a busy machine) is killed, or
    it would keep the UI's port and the instance, orphaned."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    deadline = time.monotonic() + grace_s
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=max(deadline - time.monotonic(), 1))
    for leftover in alive:
        with contextlib.suppress(psutil.Error):  # it exited meanwhile
            leftover.kill()
