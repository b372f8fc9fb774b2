"""A first deployment on a lab with thousands of plates does not stall the sensors: the
launch sensor adds at most CPP_SENSOR_MAX_NEW_KEYS new partition keys a tick (Dagster's
daemon checks each key on its own connection), the keys of the runs it requests first,
the rest on the next ticks, and a ready sub-analysis whose key has not arrived yet waits
in imagedb and is requested once it has. Real imagedb, real Dagster instance."""

from __future__ import annotations

from dagster_helpers import tick

from cpp_dagster.defs.analysis.partitions import SUB_ID_TAG, split_key
from cpp_dagster.demo.register import DEMO_PIPELINE, register_plate

PER_TICK = 10


def plate(lab, barcode: str) -> int:
    return register_plate(lab.db, lab.settings, barcode=barcode, wells=["B02"], sites=[1], finished=True, size=64)


def known_keys(instance) -> set[tuple[str, str]]:
    return {(dim, key) for dim in ("pipeline", "plate") for key in instance.get_dynamic_partitions(dim)}


def test_more_new_plates_than_a_tick_takes_arrive_over_several_ticks(lab, dagster_instance, monkeypatch):
    monkeypatch.setenv("CPP_SENSOR_MAX_NEW_KEYS", str(PER_TICK))
    ready = {lab.db.submit_analysis(plate(lab, f"CHUNK-{i:02d}"), DEMO_PIPELINE).sub_ids[0] for i in range(12)}
    idle = [f"IDLE-{i:02d}" for i in range(13)]  # registered, nothing submitted
    for barcode in idle:
        plate(lab, barcode)

    requested: set[int] = set()
    added_per_tick = []
    for _ in range(10):
        before = known_keys(dagster_instance)
        data = tick(dagster_instance)
        after = known_keys(dagster_instance)
        added_per_tick.append(len(after - before))
        for request in data.run_requests or []:
            pipeline, plate_key = split_key(request.partition_key)
            # every run of this tick has its keys: the tick never names a key Dagster lacks
            assert {("pipeline", pipeline), ("plate", plate_key)} <= after
            requested.add(int(request.tags[SUB_ID_TAG]))
        if not data.dynamic_partitions_requests:
            break

    assert max(added_per_tick) <= PER_TICK and len([n for n in added_per_tick if n]) >= 3, added_per_tick
    plates = set(dagster_instance.get_dynamic_partitions("plate"))
    assert {f"CHUNK-{i:02d}" for i in range(12)} | set(idle) <= plates
    assert DEMO_PIPELINE in dagster_instance.get_dynamic_partitions("pipeline")
    assert requested == ready  # every ready sub-analysis was requested once its key arrived
    # the keys of ready runs came before the idle plates' keys
    assert added_per_tick[0] == PER_TICK and len(tick(dagster_instance).run_requests or []) == len(ready)


def test_a_lab_without_new_keys_adds_none(lab, dagster_instance, monkeypatch):
    monkeypatch.setenv("CPP_SENSOR_MAX_NEW_KEYS", str(PER_TICK))
    plate(lab, "ONLY")
    assert tick(dagster_instance).dynamic_partitions_requests  # the plate and the pipelines
    assert not tick(dagster_instance).dynamic_partitions_requests
