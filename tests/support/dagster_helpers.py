"""Driving the real definitions the way the daemon does, for tests."""

from __future__ import annotations

import time

import dagster as dg


def tick(instance: dg.DagsterInstance, sensor_name: str = "pending_sub_analyses", cursor: str | None = None):
    """One evaluation of a sensor of the real Definitions, with its partition requests applied."""
    from cpp_dagster.definitions import build_defs

    defs = build_defs()
    sensor = defs.get_repository_def().get_sensor_def(sensor_name)
    # As a context manager: the instance it opens from the ref is closed (and unset as the
    # current one) when the tick is done.
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources, cursor=cursor
    ) as context:
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return data


def run_request_tags(request: dg.RunRequest, sensor_name: str = "pending_sub_analyses") -> dict[str, str]:
    """The tags the daemon puts on a run it launches for a sensor's request."""
    return {
        **request.tags,
        "dagster/partition": request.partition_key,
        "dagster/run_key": request.run_key,
        "dagster/sensor_name": sensor_name,
    }


def launch(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.DagsterRun:
    """Run the analysis job for a request with the multiprocess executor (each batch in its
    own process), as the daemon's run worker would; returns the finished run."""
    from cpp_dagster.definitions import analysis_job_def

    assert request.partition_key is not None
    with dg.execute_job(
        dg.reconstructable(analysis_job_def),
        instance=instance,
        tags=run_request_tags(request),
        asset_selection=list(request.asset_selection or []),
        raise_on_error=False,
    ) as result:
        return instance.get_run_by_id(result.run_id)


ANALYSIS_ASSETS = [
    dg.AssetKey(k)
    for k in ("illumination_functions", "image_qc", "feature_tables", "single_cell_table", "well_profiles")
]


def launch_from_ui(instance: dg.DagsterInstance, pipeline: str, plate: str, assets=None) -> dg.DagsterRun:
    """A Materialize of one plate x pipeline partition, as the UI launches it: no sensor
    tags, every step asset of the analysis selected unless `assets` says otherwise."""
    from cpp_dagster.definitions import analysis_job_def

    with dg.execute_job(
        dg.reconstructable(analysis_job_def),
        instance=instance,
        tags={"dagster/partition": f"{pipeline}|{plate}"},
        asset_selection=list(assets or ANALYSIS_ASSETS),
        raise_on_error=False,
    ) as result:
        return instance.get_run_by_id(result.run_id)


def events(instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType):
    return [r.dagster_event for r in instance.all_logs(run_id, of_type=event_type)]


def wait_until(what: str, predicate, timeout: float = 300, every: float = 0.5):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def daemon_environment(pg_server, tmp_path, monkeypatch, config: dict | None = None, **variables: str) -> dict:
    """A DAGSTER_HOME of the test's own holding the project's dagster.yaml (or `config`, that
    file as parsed and changed by the test), the instance in a new database of the session's
    PostgreSQL, the sensors every 2 s unless `variables` say otherwise. Set in this process's
    environment (the instance the test opens reads it) and returned for the daemon."""
    import shutil

    import yaml
    from pg_databases import new_database

    from cpp_dagster.local.environment import sqlalchemy_url
    from cpp_dagster.settings import PROJECT_ROOT

    home = tmp_path / "dagster_home"
    home.mkdir()
    if config is None:
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")  # run retries as deployed
    else:
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": sqlalchemy_url(new_database(pg_server, "dagster")),
        "CPP_SENSOR_INTERVAL_S": "2",
        **variables,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
