"""How a batch's previous attempt ended when nothing in it could say so.

A batch's own timer kills CellProfiler at the batch's job_timeout and fails the step
without a retry: a batch that ran out of time would take as long again. On Kubernetes
the Job's deadline (activeDeadlineSeconds = job_timeout + the start-up grace) stands
behind that timer. When the deadline kills the pod first (the step was stuck past its
timer, or start-up took longer than the grace), the pod dies with no chance to say why,
and dagster-k8s sees only a failed Job: under the op's RetryPolicy that is retried, like
an eviction or an out-of-memory kill.

So each attempt keeps a ledger in its batch folder (`attempt.json`): when its process
started, when it was last alive (a heartbeat every HEARTBEAT_S), and whether it ended (an
exception or success, never a SIGKILL). The next attempt reads it first: a previous
attempt that never ended and was alive for its whole job_timeout was killed at its
deadline, and the new attempt fails at once instead of running CellProfiler again.

An out-of-memory kill in the last few seconds before the timer would have fired counts as
running out of time too (its lifetime is the same): the message gives both figures.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

LEDGER = "attempt.json"
HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class Attempt:
    number: int  # Dagster's retry number: 0 for the first attempt
    started: float  # the step process's start (epoch seconds): a pod's container start
    alive: float  # its last heartbeat
    ended: bool = False  # it returned or raised; False: it was killed (or is still running)

    @property
    def lived_s(self) -> float:
        return self.alive - self.started


def ran_out_of_time(previous: Attempt | None, job_timeout_s: float) -> float | None:
    """The seconds the previous attempt lived, when it was killed after living its whole
    job_timeout (a heartbeat's precision); None when there was none, it ended by itself,
    or it was killed sooner (a crash, an eviction: worth a retry)."""
    if previous is None or previous.ended:
        return None
    return previous.lived_s if previous.lived_s + HEARTBEAT_S >= job_timeout_s else None


def _read(path: Path) -> Attempt | None:
    try:
        raw = json.loads(path.read_text())
        return Attempt(int(raw["number"]), float(raw["started"]), float(raw["alive"]), bool(raw.get("ended")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or not one of ours: nothing to go by


def _write(path: Path, attempt: Attempt) -> None:
    """Atomically (a reader never sees half a ledger); never through a link planted as the
    staging file (O_NOFOLLOW, O_EXCL after removing a stale one)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(attempt), out)
    os.replace(staging, path)


@contextmanager
def attempt(batch_dir: Path, number: int) -> Iterator[Attempt | None]:
    """Keep this attempt's ledger while the block runs; yields the previous attempt's
    (None on a first attempt, or when it left none)."""
    path = Path(batch_dir) / LEDGER
    found = _read(path)
    previous = found if found is not None and found.number < number else None
    started = psutil.Process().create_time()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                _write(path, Attempt(number, started, time.time()))
            except OSError:
                return  # a work area that cannot be written fails the batch itself

    _write(path, Attempt(number, started, time.time()))
    heart = threading.Thread(target=beat, name=f"attempt-{number}-heartbeat", daemon=True)
    heart.start()
    try:
        yield previous
    finally:
        stop.set()
        heart.join(timeout=HEARTBEAT_S * 2)
        with suppress(OSError):  # the block's own error (if any) is the one to report
            _write(path, Attempt(number, started, time.time(), ended=True))
