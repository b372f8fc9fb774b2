"""Where a demo run's time goes, read from its Dagster event log: the run's start-up
(enqueued -> RUN_START), each step's start-up (STEP_WORKER_STARTING -> STEP_START: a new
process importing Dagster and the project) and each step's work (STEP_START -> end).

    .venv/bin/python benchmarks/demo_phases.py            # the latest run of the local instance
    .venv/bin/python benchmarks/demo_phases.py RUN_ID

Run it after `make demo` (it reads the local deployment's instance, .cpp/). Figures are
seconds; "critical path start-up" sums the start-up of the steps that gate the run's end.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import dagster as dg

from cpp_dagster.local import environment as local_env

END_EVENTS = {"STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"}


def phases(instance: dg.DagsterInstance, run_id: str) -> dict:
    events = instance.all_logs(run_id)
    first = {}
    steps: dict[str, dict[str, float]] = defaultdict(dict)
    for e in events:
        if e.dagster_event is None:
            continue
        kind = e.dagster_event.event_type_value.replace("PIPELINE_", "RUN_")  # Dagster's older names
        first.setdefault(kind, e.timestamp)
        if e.step_key:
            key = {"STEP_WORKER_STARTING": "worker", "STEP_START": "start"}.get(kind)
            if key:
                steps[e.step_key].setdefault(key, e.timestamp)
            if kind in END_EVENTS:
                steps[e.step_key]["end"] = e.timestamp
    run = instance.get_run_record_by_id(run_id)
    created = run.create_timestamp.timestamp()
    return {"created": created, "first": first, "steps": dict(steps), "end": run.end_time or events[-1].timestamp}


def report(p: dict) -> list[str]:
    created, first = p["created"], p["first"]
    queued = first.get("RUN_ENQUEUED", created)
    starting = first.get("RUN_STARTING", queued)
    start = first.get("RUN_START", starting)
    lines = [
        f"run: in the queue {starting - queued:5.1f} s, run worker start-up {start - starting:5.1f} s, "
        f"RUN_START -> end {p['end'] - start:6.1f} s"
    ]
    lines.append(f"{'step':58} {'start-up':>9} {'work':>8}")
    startups = []
    for key, s in sorted(p["steps"].items(), key=lambda kv: kv[1].get("worker", kv[1].get("start", 0))):
        startup = s["start"] - s["worker"] if "worker" in s and "start" in s else None
        work = s["end"] - s["start"] if "end" in s and "start" in s else None
        if startup is not None:
            startups.append(startup)
        lines.append(
            f"{key[:58]:58} {startup if startup is not None else float('nan'):9.1f} "
            f"{work if work is not None else float('nan'):8.1f}"
        )
    if startups:
        lines.append(
            f"step start-up: mean {sum(startups) / len(startups):.1f} s, max {max(startups):.1f} s "
            f"over {len(startups)} steps"
        )
    return lines


def main(argv: list[str]) -> int:
    os.environ.update(local_env.environment(compounds=False))
    with dg.DagsterInstance.get() as instance:
        if argv:
            run_id = argv[0]
        else:
            runs = instance.get_runs(limit=1)
            if not runs:
                print("no run in the local instance: run `make demo` first")
                return 1
            run_id = runs[0].run_id
        print(f"run {run_id}")
        print("\n".join(report(phases(instance, run_id))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
