"""The real dagster-daemon ticks the sensor again and again, and is restarted, while the
requested run is still queued (the sub-analysis has not started, so imagedb still
offers it): the run key keeps it at one run."""
from __future__ import annotations

import time

import dagster as dg
import yaml

from conftest import new_database
from cpp_dagster.config import PROJECT_ROOT
from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate
from cpp_dagster.demo.run import dagster_daemon
from cpp_dagster.local import sqlalchemy_url


def test_repeated_ticks_and_a_daemon_restart_request_one_run(lab, pg_server, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    config["concurrency"]["runs"]["max_concurrent_runs"] = 0  # runs stay queued: nothing starts
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {"DAGSTER_HOME": str(home), "DAGSTER_PG_URL": sqlalchemy_url(new_database(pg_server, "dagster")),
           "CPP_SENSOR_INTERVAL_S": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    acq = register_plate(lab.db, lab.settings, barcode="ONCE", wells=["B02"], sites=[1], seed=4)
    sub_id = lab.db.submit_analysis(acq, DEMO_PIPELINE).sub_ids[0]

    with dg.DagsterInstance.get() as instance:
        def runs():
            return instance.get_runs(filters=dg.RunsFilter(tags={"imagedb/sub_id": str(sub_id)}))

        for attempt in range(2):  # the daemon, then the daemon restarted
            with dagster_daemon(env, tmp_path / f"daemon-{attempt}.log"):
                deadline = time.monotonic() + 90
                while not runs() and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(8)  # several more sensor ticks while the run waits in the queue
        (run,) = runs()
        assert run.status == dg.DagsterRunStatus.QUEUED
        assert lab.db.sub_analysis(sub_id).start is None  # still offered by imagedb every tick
        state = next(s for s in instance.all_instigator_state() if s.name == "pending_sub_analyses")
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        assert len(ticks) >= 3  # the sensor was evaluated again, by both daemons (about every 5 s)
        assert sum(len(t.run_ids) for t in ticks) == 1  # ... and launched one run in all
