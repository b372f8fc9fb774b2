"""`cpp-dagster dev` (what `make dev` runs): the real `dagster dev` with its webserver and
daemon on the project's dagster.yaml. The instance it opens, without the servers:
tests/integration/test_local_instance.py."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

from dagster_helpers import wait_until
from pg_databases import new_database
from webserver import free_port

from cpp_dagster.local.environment import sqlalchemy_url
from cpp_dagster.local.ui import ui_answers
from cpp_dagster.settings import PROJECT_ROOT


def test_make_dev_prints_the_asset_graph_url_and_the_ui_answers_there(pg_server, tmp_path):
    """`cpp-dagster dev` (what `make dev` runs) announces the asset graph, not the bare
    server; the page behind that URL is the UI. SIGTERM stops it with its webserver and daemon."""
    port = free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CPP_NAS_ROOT": str(tmp_path / "nas"),
        "DAGSTER_PG_URL": sqlalchemy_url(new_database(pg_server, "dagster")),
        "CPP_IMAGEDB_URL": new_database(pg_server, "imagedb"),
        "CPP_TRAINING_DB_URL": new_database(pg_server, "training"),
    }
    lines: queue.Queue[str] = queue.Queue()
    proc = subprocess.Popen(
        [str(PROJECT_ROOT / ".venv" / "bin" / "cpp-dagster"), "dev", "--port", str(port), "--no-browser"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        expected = f"Dagster UI: http://127.0.0.1:{port}/asset-groups (the asset graph)"
        seen, deadline = [], time.monotonic() + 240
        while expected not in seen:
            assert time.monotonic() < deadline, f"no line {expected!r} within 240 s; stderr:\n" + "".join(seen)[-3000:]
            assert proc.poll() is None, "cpp-dagster dev exited; stderr:\n" + "".join(seen)[-3000:]
            try:
                seen.append(lines.get(timeout=1).rstrip("\n"))
            except queue.Empty:
                pass
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/asset-groups", timeout=30) as page:
            assert page.status == 200 and "<html" in page.read().decode().lower()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 143
        assert wait_until("the webserver and daemon to stop with it", lambda: not group_alive(proc.pid), 90)
        assert not ui_answers(f"http://127.0.0.1:{port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
