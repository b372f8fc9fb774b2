"""The ledger an attempt of a batch keeps in its folder, and what the next attempt reads
from it: a previous attempt killed after living its whole job timeout ran out of time (on
Kubernetes: the Job's deadline); one killed sooner, or one that ended by itself, did not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cpp_dagster.analysis import attempts
from cpp_dagster.analysis.attempts import Attempt, ran_out_of_time

KILLED_AFTER_S = 5


def killed_attempt(batch_dir, lived_s: float) -> None:
    """Attempt 0 of a batch in a process of its own, SIGKILLed after `lived_s`, as the
    kubelet kills a pod at its deadline: nothing in it runs any more."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cpp_dagster.analysis import attempts\n"
        "with attempts.attempt(Path(sys.argv[1]), 0):\n"
        "    print('running', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(batch_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "running\n"
    time.sleep(lived_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def batch_killed_after_5_s(tmp_path_factory):
    batch_dir = tmp_path_factory.mktemp("batch_0000")
    killed_attempt(batch_dir, KILLED_AFTER_S)
    return batch_dir


def test_a_killed_attempt_that_lived_its_job_timeout_ran_out_of_time(batch_killed_after_5_s):
    with attempts.attempt(batch_killed_after_5_s, 1) as previous:
        assert previous is not None and previous.number == 0 and not previous.ended
        lived = ran_out_of_time(previous, job_timeout_s=KILLED_AFTER_S)
    assert lived is not None and KILLED_AFTER_S - attempts.HEARTBEAT_S <= lived <= KILLED_AFTER_S + 3


def test_an_attempt_killed_well_before_its_job_timeout_is_a_crash_worth_a_retry(batch_killed_after_5_s):
    with attempts.attempt(batch_killed_after_5_s, 1) as previous:
        assert ran_out_of_time(previous, job_timeout_s=60) is None


def test_an_attempt_that_raised_ended_and_the_next_one_runs(tmp_path):
    with pytest.raises(RuntimeError), attempts.attempt(tmp_path, 0):
        raise RuntimeError("CellProfiler exited with 1")
    ledger = json.loads((tmp_path / attempts.LEDGER).read_text())
    assert ledger["number"] == 0 and ledger["ended"] is True
    with attempts.attempt(tmp_path, 1) as previous:
        assert previous.ended and ran_out_of_time(previous, job_timeout_s=0) is None


def test_a_first_attempt_or_a_new_runs_first_attempt_has_no_previous_one(tmp_path):
    """A re-execution of the run starts again at retry number 0: the lab asked for it."""
    with attempts.attempt(tmp_path, 0) as previous:
        assert previous is None
    with attempts.attempt(tmp_path, 0) as previous:
        assert previous is None


@pytest.mark.parametrize("ledger", ["", "{", "[]", '{"number": "x"}', "null", '{"number": 0}'])
def test_a_ledger_that_is_not_one_is_no_previous_attempt(tmp_path, ledger):
    (tmp_path / attempts.LEDGER).write_text(ledger)
    with attempts.attempt(tmp_path, 1) as previous:
        assert previous is None
    assert json.loads((tmp_path / attempts.LEDGER).read_text())["number"] == 1


def test_a_link_planted_as_the_staging_file_is_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the project's")
    batch_dir = tmp_path / "batch_0000"
    batch_dir.mkdir()
    (batch_dir / f".{attempts.LEDGER}.{os.getpid()}").symlink_to(outside)
    with attempts.attempt(batch_dir, 0) as previous:
        assert previous is None
    assert outside.read_text() == "not the project's"
    assert json.loads((batch_dir / attempts.LEDGER).read_text())["ended"] is True


def test_ran_out_of_time_is_the_lifetime_against_the_timeout():
    assert ran_out_of_time(None, 10) is None
    assert ran_out_of_time(Attempt(0, started=100, alive=109, ended=False), 10) == 9  # within a heartbeat
    assert ran_out_of_time(Attempt(0, started=100, alive=105, ended=False), 10) is None
    assert ran_out_of_time(Attempt(0, started=100, alive=200, ended=True), 10) is None
