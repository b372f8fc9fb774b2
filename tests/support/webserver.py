"""The real Dagster UI server for tests: `dagster-webserver` and `dagster-daemon run` over
the project's workspace.yaml on a DAGSTER_HOME of their own, and a small client of the
GraphQL API the UI itself speaks (urllib, no extra dependency).

    with dagster_ui(tmp_path, pg_url) as ui:
        backfill_id = ui.launch_partition_backfill(["feature_tables"], ["demo-cellpainting|P-1"])
        ui.wait_for_backfill(backfill_id)
        ui.partition_statuses("feature_tables")  # {"demo-cellpainting|P-1": "materialized", ...}

Both processes (and their code servers and run workers) are stopped when the block ends,
also when it fails. Their output is in `<home>/webserver.log` and `<home>/daemon.log`, which
a failing wait quotes.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dagster_helpers
import yaml

from cpp_dagster.demo.run import dagster_process
from cpp_dagster.local.environment import pin_pool_limits
from cpp_dagster.local.ui import ui_answers
from cpp_dagster.settings import PROJECT_ROOT

FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
FINISHED_RUN = {"SUCCESS", "FAILURE", "CANCELED"}

_METADATA_VALUE = """
  label
  __typename
  ... on MarkdownMetadataEntry { mdStr }
  ... on TextMetadataEntry { text }
  ... on IntMetadataEntry { intValue }
  ... on FloatMetadataEntry { floatValue }
  ... on BoolMetadataEntry { boolValue }
  ... on PathMetadataEntry { path }
  ... on UrlMetadataEntry { url }
  ... on JsonMetadataEntry { jsonString }
"""
_METADATA_FIELD = {
    "MarkdownMetadataEntry": "mdStr",
    "TextMetadataEntry": "text",
    "IntMetadataEntry": "intValue",
    "FloatMetadataEntry": "floatValue",
    "BoolMetadataEntry": "boolValue",
    "PathMetadataEntry": "path",
    "UrlMetadataEntry": "url",
    "JsonMetadataEntry": "jsonString",
}


class GraphQLError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def asset_key(key: str | list[str]) -> dict:
    """`imagedb/lab_overview` or ["imagedb", "lab_overview"] as an AssetKeyInput."""
    return {"path": key.split("/") if isinstance(key, str) else list(key)}


def metadata_dict(entries: list[dict]) -> dict:
    """GraphQL metadata entries as {label: value} (JSON entries parsed)."""
    out = {}
    for e in entries:
        value = e.get(_METADATA_FIELD.get(e["__typename"], ""))
        out[e["label"]] = json.loads(value) if e["__typename"] == "JsonMetadataEntry" else value
    return out


def partition_statuses_from(statuses: dict, dimensions: list[dict]) -> dict[str, str]:
    """`assetPartitionStatuses` as {partition key: materialized / failed / materializing /
    missing}. A multi-partitioned asset's statuses are ranges over its primary dimension,
    each with the secondary dimension's statuses; its keys join the dimension values in
    the order of the dimension names (Dagster's MultiPartitionKey)."""

    def one_dimension(s: dict) -> dict[str, str]:
        out = {k: "missing" for k in s["unmaterializedPartitions"]}
        out.update({k: "materialized" for k in s["materializedPartitions"]})
        out.update({k: "failed" for k in s["failedPartitions"]})
        out.update({k: "materializing" for k in s["materializingPartitions"]})
        return out

    kind = statuses["__typename"]
    if kind == "DefaultPartitionStatuses":
        return one_dimension(statuses)
    if kind != "MultiPartitionStatuses":
        raise GraphQLError(f"partition statuses of type {kind} are not handled here")
    keys = {d["name"]: d["partitionKeys"] for d in dimensions}
    primary = statuses["primaryDimensionName"]
    (secondary,) = [name for name in keys if name != primary]
    out = {}
    for r in statuses["ranges"]:
        primary_keys = keys[primary]
        span = primary_keys[primary_keys.index(r["primaryDimStartKey"]) : primary_keys.index(r["primaryDimEndKey"]) + 1]
        for p in span:
            for s, status in one_dimension(r["secondaryDim"]).items():
                values = {primary: p, secondary: s}
                out["|".join(values[name] for name in sorted(values))] = status
    return out


class DagsterUI:
    """The GraphQL API of a running webserver, as the UI calls it."""

    def __init__(self, url: str, logs: list[Path]):
        self.url = url
        self.logs = logs

    def query(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as e:
            # a PythonError result comes with HTTP 500 and the data in the body
            body = e.read()
            try:
                answer = json.loads(body)
            except ValueError:
                raise GraphQLError(f"HTTP {e.code}: {body[:2000].decode(errors='replace')}") from None
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"])[:2000])
        return answer["data"]

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {p.name} (last {lines} lines)\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
            for p in self.logs
            if p.exists()
        )

    def wait_until(self, what: str, predicate, timeout: float = 300, every: float = 2):
        """Poll `predicate` until it returns something truthy; on timeout the error quotes
        the servers' logs."""
        try:
            return dagster_helpers.wait_until(what, predicate, timeout=timeout, every=every)
        except TimeoutError as e:
            raise TimeoutError(f"{e} (after {timeout:.0f} s)\n{self.log_tails()}") from None

    # -- the code location ------------------------------------------------------------------

    def code_location_error(self) -> str | None:
        """None once every code location has loaded; else why not (its Python error, or `loading`)."""
        data = self.query("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
        entries = data["workspaceOrError"].get("locationEntries")
        if not entries:
            return "no code location yet"
        for e in entries:
            loaded = e["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                return f"{e['name']}: {loaded['message']}"
            if e["loadStatus"] != "LOADED" or not loaded:
                return "loading"
        return None

    # -- backfills ----------------------------------------------------------------------------

    def launch_partition_backfill(self, assets: list[str], partitions: list[str], tags: dict | None = None) -> str:
        """Backfill `assets` over `partitions` as the UI's Materialize dialog does; the backfill id."""
        data = self.query(
            """mutation($params: LaunchBackfillParams!) {
            launchPartitionBackfill(backfillParams: $params) {
              __typename
              ... on LaunchBackfillSuccess { backfillId }
              ... on Error { message }
              ... on PythonError { stack }
            } }""",
            params={
                "assetSelection": [asset_key(a) for a in assets],
                "partitionNames": partitions,
                "fromFailure": False,
                "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
            },
        )
        result = data["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise GraphQLError(f"backfill refused ({result['__typename']}): {result.get('message')}")
        return result["backfillId"]

    def backfill(self, backfill_id: str) -> dict:
        """The backfill's status (BulkActionStatus), partition names, run ids and error."""
        data = self.query(
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
            __typename
            ... on PartitionBackfill { id status partitionNames numCancelable error { message }
                                       runs { runId status } }
            ... on PythonError { message } } }""",
            id=backfill_id,
        )
        result = data["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise GraphQLError(f"backfill {backfill_id}: {result.get('message', result['__typename'])}")
        return result

    def wait_for_backfill(self, backfill_id: str, timeout: float = 900) -> dict:
        """The backfill once the daemon has finished it and all its runs have ended."""

        def done():
            b = self.backfill(backfill_id)
            finished = b["status"] in FINISHED_BACKFILL and all(r["status"] in FINISHED_RUN for r in b["runs"])
            return b if finished else None

        return self.wait_until(f"backfill {backfill_id} to finish", done, timeout)

    # -- runs ------------------------------------------------------------------------------------

    def runs(self, tags: dict[str, str] | None = None) -> list[dict]:
        """Runs (newest first) with all these tags: id, job, status and tags as a dict."""
        data = self.query(
            """query($filter: RunsFilter) { runsOrError(filter: $filter) {
            __typename ... on Runs { results { runId jobName status tags { key value } } }
            ... on PythonError { message } } }""",
            filter={"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        )
        result = data["runsOrError"]
        if result["__typename"] != "Runs":
            raise GraphQLError(result.get("message", result["__typename"]))
        return [{**r, "tags": {t["key"]: t["value"] for t in r["tags"]}} for r in result["results"]]

    def launch_run(self, job: str, run_config: dict, tags: dict[str, str] | None = None) -> dict:
        """Launch `job` as the Launchpad does (`launchRun`): {"kind": the result's
        typename, "run_id" (on success), "messages": every error message, causes included}."""
        location = self.query("""{ repositoriesOrError { ... on RepositoryConnection {
            nodes { name location { name } } } } }""")["repositoriesOrError"]["nodes"][0]
        data = self.query(
            """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
              __typename
              ... on LaunchRunSuccess { run { runId } }
              ... on RunConfigValidationInvalid { errors { message } }
              ... on PythonError { message causes { message } }
              ... on Error { message } } }""",
            params={
                "selector": {
                    "repositoryLocationName": location["location"]["name"],
                    "repositoryName": location["name"],
                    "jobName": job,
                },
                "runConfigData": run_config,
                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
            },
        )
        result = data["launchRun"]
        messages = [result.get("message") or ""]
        messages += [e["message"] for e in result.get("errors") or []]
        messages += [c["message"] for c in result.get("causes") or []]
        return {
            "kind": result["__typename"],
            "run_id": (result.get("run") or {}).get("runId"),
            "messages": [m for m in messages if m],
        }

    def run_messages(self, run_id: str) -> list[str]:
        """The messages of a run's event log, as the run page lists them."""
        data = self.query(
            """query($id: ID!) { logsForRun(runId: $id, limit: 5000) {
            __typename ... on EventConnection { events { __typename ... on MessageEvent { message } } }
            ... on PythonError { message } } }""",
            id=run_id,
        )
        result = data["logsForRun"]
        if result["__typename"] != "EventConnection":
            raise GraphQLError(result.get("message", result["__typename"]))
        return [e["message"] for e in result["events"] if e.get("message")]

    # -- assets -------------------------------------------------------------------------------

    def asset_keys(self) -> list[str]:
        data = self.query("{ assetNodes { assetKey { path } } }")
        return sorted("/".join(n["assetKey"]["path"]) for n in data["assetNodes"])

    def partition_keys(self, asset: str) -> list[str]:
        data = self.query(
            """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
            ... on AssetNode { partitionKeys } } }""",
            key=asset_key(asset),
        )
        return data["assetNodeOrError"]["partitionKeys"]

    def partition_statuses(self, asset: str) -> dict[str, str]:
        """{partition key: materialized / failed / materializing / missing} from the
        asset's `assetPartitionStatuses` (what the partition grid shows)."""
        data = self.query(
            """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
            __typename
            ... on AssetNode {
              partitionKeysByDimension { name partitionKeys }
              assetPartitionStatuses {
                __typename
                ... on DefaultPartitionStatuses { materializedPartitions failedPartitions
                                                  unmaterializedPartitions materializingPartitions }
                ... on MultiPartitionStatuses {
                  primaryDimensionName
                  ranges { primaryDimStartKey primaryDimEndKey secondaryDim {
                    __typename
                    ... on DefaultPartitionStatuses { materializedPartitions failedPartitions
                                                      unmaterializedPartitions materializingPartitions } } } } } } } }""",
            key=asset_key(asset),
        )
        node = data["assetNodeOrError"]
        if node["__typename"] != "AssetNode":
            raise GraphQLError(f"no asset {asset}: {node['__typename']}")
        return partition_statuses_from(node["assetPartitionStatuses"], node["partitionKeysByDimension"])

    def latest_materialization(self, asset: str, partition: str | None = None) -> dict | None:
        """The asset's (partition's) latest materialization: partition, run id and metadata dict."""
        return self._latest_event(asset, "assetMaterializations", partition)

    def latest_observation(self, asset: str) -> dict | None:
        """The asset's latest observation: run id (empty when a sensor observed it) and metadata dict."""
        return self._latest_event(asset, "assetObservations", None)

    def _latest_event(self, asset: str, field: str, partition: str | None) -> dict | None:
        data = self.query(
            f"""query($key: AssetKeyInput!, $partitions: [String!]) {{
            assetOrError(assetKey: $key) {{ __typename ... on Asset {{
              {field}(limit: 1, partitions: $partitions) {{ partition runId timestamp
                                                           metadataEntries {{ {_METADATA_VALUE} }} }} }} }} }}""",
            key=asset_key(asset),
            partitions=[partition] if partition else None,
        )
        found = data["assetOrError"]
        if found["__typename"] != "Asset":
            return None  # no event of the asset yet
        events = found[field]
        if not events:
            return None
        e = events[0]
        return {
            "partition": e["partition"],
            "run_id": e["runId"],
            "timestamp": e["timestamp"],
            "metadata": metadata_dict(e["metadataEntries"]),
        }


def write_dagster_home(home: Path, **runs_overrides) -> Path:
    """A DAGSTER_HOME holding the repository's dagster.yaml (the lab's instance settings,
    nux off included), with optional `concurrency.runs` overrides."""
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    config["concurrency"]["runs"].update(runs_overrides)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@contextmanager
def dagster_ui(
    home: Path,
    dagster_pg_url: str,
    *,
    env: dict[str, str] | None = None,
    sensor_interval_s: int = 2,
    timeout: float = 300,
) -> Iterator[DagsterUI]:
    """`dagster-webserver` (on a free port) and `dagster-daemon run` on `home` (see
    `write_dagster_home`) and the Dagster storage at `dagster_pg_url`, with the rest of the
    environment (CPP_IMAGEDB_URL, CPP_NAS_ROOT, ...) inherited; yields once the code
    location has loaded in the webserver. Sensors tick every `sensor_interval_s` s."""
    port = free_port()
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_pg_url,
        "CPP_SENSOR_INTERVAL_S": str(sensor_interval_s),
        "CPP_OVERVIEW_INTERVAL_S": str(sensor_interval_s),
        **(env or {}),
    }
    logs = [home / "webserver.log", home / "daemon.log"]
    ui = DagsterUI(f"http://127.0.0.1:{port}", logs)
    pin_pool_limits({**os.environ, **env})  # as `cpp-dagster dev` does
    with ExitStack() as stack:
        webserver = stack.enter_context(
            dagster_process("dagster-webserver", ["-h", "127.0.0.1", "-p", str(port)], env, logs[0])
        )
        stack.enter_context(dagster_process("dagster-daemon", ["run"], env, logs[1]))

        def loaded():
            if webserver.poll() is not None:
                raise RuntimeError(f"dagster-webserver exited with code {webserver.returncode}\n{ui.log_tails()}")
            if not ui_answers(ui.url):
                return False
            error = ui.code_location_error()
            if error not in (None, "loading", "no code location yet"):
                raise RuntimeError(f"the code location did not load: {error}")
            return error is None

        ui.wait_until("the webserver to answer and load the code location", loaded, timeout)
        yield ui
