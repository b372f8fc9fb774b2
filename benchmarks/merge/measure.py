"""Running one benchmark step in its own process and measuring it: wall time (the child's
whole life, interpreter start and imports included), CPU time (user + system, the
child's own children included) and peak RSS (the largest single process of the child's
tree: what one pod or step would need).

Measured with `/usr/bin/time -v` when present, else by polling the child's RSS with
psutil (and the kernel's exact figures from wait4 where it has them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

TIME = "/usr/bin/time"
MB = 1e6


def measurer(choice: str) -> str:
    if choice == "auto":
        if os.access(TIME, os.X_OK) and subprocess.run([TIME, "-v", "true"], capture_output=True).returncode == 0:
            return "time"
        return "psutil"
    return choice


def run_measured(label: str, cmd: list[str], env: dict, how: str) -> dict:
    """Run `cmd`; its wall seconds, CPU seconds and peak RSS (MB). RuntimeError with the
    child's output if it fails."""
    if how == "time":
        t0 = time.perf_counter()
        p = subprocess.run([TIME, "-v", *cmd], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{label} failed:\n{p.stdout}\n{p.stderr}")
        fields = dict(ln.strip().rsplit(": ", 1) for ln in p.stderr.splitlines() if ": " in ln)
        rss_kb = int(fields["Maximum resident set size (kbytes)"])
        cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_kb * 1024 / MB, **_work(p.stdout)}
    return _run_polled(label, cmd, env)


def _work(stdout: str) -> dict:
    """The child's own figures for its work alone, from its last line of output (a JSON
    object, `work_s` and `work_cpu_s`), if it printed them."""
    lines = stdout.strip().splitlines()
    try:
        return {k: float(v) for k, v in json.loads(lines[-1]).items()} if lines else {}
    except (ValueError, AttributeError):
        return {}


def _run_polled(label: str, cmd: list[str], env: dict) -> dict:
    """Without /usr/bin/time: poll the RSS of the child (and any of its children) with
    psutil every 20 ms; on Linux/BSD wait4 also gives the kernel's exact peak and CPU
    time, and the larger of the two peaks is reported."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = exact = 0
    cpu = 0.0
    out: list[bytes] = [b"", b""]

    def drain(i, pipe):  # in threads, so a chatty child cannot block
        out[i] = pipe.read()

    threads = [
        threading.Thread(target=drain, args=(i, pipe), daemon=True) for i, pipe in enumerate((proc.stdout, proc.stderr))
    ]
    for t in threads:
        t.start()
    while True:
        if hasattr(os, "wait4"):
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                exact = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
                cpu = usage.ru_utime + usage.ru_stime
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
        elif proc.poll() is not None:
            break
        try:
            peak = max(peak, max([ps.memory_info().rss] + [c.memory_info().rss for c in ps.children(recursive=True)]))
            if not hasattr(os, "wait4"):
                times = ps.cpu_times()
                cpu = times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    for t in threads:
        t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n" + b"\n".join(out).decode(errors="replace"))
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": max(peak, exact) / MB, **_work(out[0].decode())}


def best(a: dict | None, b: dict) -> dict:
    """Of two runs of a step: the shorter times, the larger peak RSS."""
    if a is None:
        return dict(b)
    return {
        **{k: min(a[k], b[k]) for k in a if k != "peak_rss_mb" and k in b},
        "peak_rss_mb": max(a["peak_rss_mb"], b["peak_rss_mb"]),
    }
