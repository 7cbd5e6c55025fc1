"""Dagster's records as batch accounting reads them, over the webserver's GraphQL API with plain `requests` (no
dagster import: the `ml-platform batches` and `doctor` commands run beside the stack, not inside it). The
Dagster-side reader (assets/accounting.py) builds the same RunFacts from a DagsterInstance."""

from __future__ import annotations

from dataclasses import dataclass, replace

import requests

from ml_platform.data.accounting import BATCH_LAYERS, RunFact

TIMEOUT_SECONDS = 15
PAGE = 500
ERRORS_PER_READ = 50  # failure messages fetched per read: one query each
REFUSED_TAG = "ml_platform/refused"

RUNS = """query Runs($limit: Int, $cursor: String) { runsOrError(limit: $limit, cursor: $cursor) { __typename
  ... on Runs { results { runId status creationTime startTime endTime tags { key value } assetSelection { path } } }
  ... on PythonError { message } } }"""
PARTITIONS = """query Keys($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { __typename
  ... on AssetNode { partitionKeys } ... on AssetNotFoundError { message } } }"""
FAILURE = """query Failure($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
  ... on EventConnection { events { __typename ... on ErrorEvent { error { message errorChain { error { message } } } }
                                    ... on MessageEvent { message } } }
  ... on PythonError { message } ... on RunNotFoundError { message } } }"""
SENSORS = """{ repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } sensors { name minIntervalSeconds
      sensorState { status typeSpecificData { ... on SensorData { lastCursor lastTickTimestamp } }
                    ticks(limit: 1) { timestamp status error { message } } } } } }
  ... on PythonError { message } } }"""
DAEMONS = """{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy
  lastHeartbeatTime lastHeartbeatErrors { message } } } } }"""


class DagsterError(RuntimeError):
    """The webserver answered, but not with what was asked; the message says what."""


class DagsterUnreachable(DagsterError):
    pass


def graphql(url: str, query: str, timeout: float = TIMEOUT_SECONDS, **variables) -> dict:
    base = url.rstrip("/")
    try:
        r = requests.post(f"{base}/graphql", json={"query": query, "variables": variables}, timeout=timeout)
    except requests.RequestException as e:
        raise DagsterUnreachable(f"Dagster webserver at {base} unreachable: {e}") from None
    if r.status_code != 200:
        raise DagsterUnreachable(f"Dagster webserver at {base} answered HTTP {r.status_code}: {r.text[:300]}")
    try:
        body = r.json()
    except ValueError:
        raise DagsterUnreachable(f"Dagster webserver at {base} did not answer JSON: {r.text[:300]}") from None
    if body.get("errors"):
        raise DagsterError(f"Dagster at {base}: {'; '.join(e.get('message', '?') for e in body['errors'])[:1000]}")
    return body["data"]


def _or_error(url: str, node: dict, typename: str) -> dict:
    if node["__typename"] != typename:
        raise DagsterError(f"Dagster at {url.rstrip('/')}: {node['__typename']}: {node.get('message', '')}")
    return node


def layer_of(spec, paths: list[list[str]] | None) -> str | None:
    """raw_batches if selected, else cleaned_features, else the first selected layer of this dataset."""
    layers = [p[-1] for p in paths or () if len(p) == 2 and p[0] == spec.name]
    return next((b for b in BATCH_LAYERS if b in layers), layers[0] if layers else None)


def runs_from_graphql(url: str, spec, limit: int = 2000, settled: set[str] | frozenset = frozenset()
                      ) -> list[RunFact]:
    """The newest `limit` runs as RunFacts, newest first. Runs of other datasets keep only their status (they count
    in the queue depth). The failure message is fetched for the newest failed run of each batch whose newest run
    failed, unless its key is in `settled` (accepted, superseded, quarantined by the store)."""
    facts: list[RunFact] = []
    cursor = None
    while len(facts) < limit:
        want = min(PAGE, limit - len(facts))
        page = _or_error(url, graphql(url, RUNS, limit=want, cursor=cursor)["runsOrError"], "Runs")["results"]
        for r in page:
            tags = {t["key"]: t["value"] for t in r["tags"]}
            layer = layer_of(spec, [a["path"] for a in r["assetSelection"] or []])
            facts.append(RunFact(run_id=r["runId"], partition=tags.get("dagster/partition") if layer else None,
                                 layer=layer, status=r["status"], created=float(r["creationTime"]),
                                 ended=r["endTime"], refused=tags.get(REFUSED_TAG),
                                 will_retry=tags.get("dagster/will_retry") == "true"))
        if len(page) < want:
            break
        cursor = page[-1]["runId"]
    newest: dict[str, int] = {}
    for i, f in enumerate(facts):
        if f.partition and f.layer in BATCH_LAYERS and f.partition not in newest:
            newest[f.partition] = i
    wanted = [i for k, i in newest.items() if k not in settled and facts[i].status == "FAILURE"
              and not facts[i].refused]
    for i in wanted[:ERRORS_PER_READ]:
        facts[i] = replace(facts[i], error=failure_message(url, facts[i].run_id))
    return facts


def failure_message(url: str, run_id: str) -> str:
    """The first failure of a run (a step's exception comes before the run's own failure event), by its root cause:
    Dagster wraps a step's exception in "Error occurred while executing op ..." and chains the real one."""
    conn = graphql(url, FAILURE, id=run_id)["logsForRun"]
    if conn["__typename"] != "EventConnection":
        return conn.get("message") or "the run failed"
    for e in conn["events"]:
        if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent"):
            err = e.get("error") or {}
            chain = [c["error"]["message"] for c in err.get("errorChain") or [] if c.get("error")]
            text = ((chain[-1] if chain else err.get("message")) or e.get("message") or "").strip()
            if text:
                return text[:1000]
    return "the run failed"


def known_partitions(url: str, spec) -> set[str]:
    """The batches' dynamic partition keys, from the asset that owns them."""
    node = graphql(url, PARTITIONS, path=[spec.name, "raw_batches"])["assetNodeOrError"]
    if node["__typename"] != "AssetNode":
        raise DagsterError(f"Dagster at {url.rstrip('/')} has no asset {spec.name}/raw_batches: is the code location "
                           f"loaded? ({node.get('message', node['__typename'])})")
    return set(node["partitionKeys"])


@dataclass(frozen=True)
class SensorInfo:
    name: str
    location: str
    status: str  # RUNNING or STOPPED
    interval: int  # minimum seconds between ticks
    cursor: str | None
    last_tick_at: float | None
    last_tick_status: str | None
    last_tick_error: str | None


def sensor_cursor(url: str, sensor_name: str) -> SensorInfo | None:
    """A sensor's state, cursor and last tick, from whichever code location defines it (None: none does)."""
    repos = _or_error(url, graphql(url, SENSORS)["repositoriesOrError"], "RepositoryConnection")["nodes"]
    for repo in repos:
        for s in repo["sensors"]:
            if s["name"] != sensor_name:
                continue
            state = s["sensorState"]
            data = state.get("typeSpecificData") or {}
            tick = (state.get("ticks") or [None])[0] or {}
            return SensorInfo(sensor_name, repo["location"]["name"], state["status"], int(s["minIntervalSeconds"]),
                              data.get("lastCursor"), tick.get("timestamp") or data.get("lastTickTimestamp"),
                              tick.get("status"), (tick.get("error") or {}).get("message"))
    return None


def daemon_health(url: str) -> list[dict]:
    """The daemons the instance requires: [{daemonType, healthy, lastHeartbeatTime, lastHeartbeatErrors}]."""
    statuses = graphql(url, DAEMONS)["instance"]["daemonHealth"]["allDaemonStatuses"]
    return [s for s in statuses if s["required"]]


LOCATIONS = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name } }
  ... on PythonError { message } } }"""
RELOAD = """mutation Reload($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) { __typename
  ... on WorkspaceLocationEntry { name loadStatus locationOrLoadError { __typename ... on PythonError { message } } }
  ... on PythonError { message } ... on UnauthorizedError { message } ... on ReloadNotSupported { message }
  ... on RepositoryLocationNotFound { message } } }"""


def reload_code_locations(url: str) -> list[str]:
    """Ask the webserver to reload every code location (a new spec file becomes assets and sensors); the daemon
    reloads on its own within a minute. Returns what went wrong per location (empty: every one reloaded)."""
    ws = _or_error(url, graphql(url, LOCATIONS)["workspaceOrError"], "Workspace")
    problems = []
    for entry in ws["locationEntries"]:
        out = graphql(url, RELOAD, timeout=120, name=entry["name"])["reloadRepositoryLocation"]
        loaded = out.get("locationOrLoadError") or {}
        if out["__typename"] != "WorkspaceLocationEntry":
            problems.append(f"{entry['name']}: {out['__typename']}: {out.get('message', '')[:300]}")
        elif loaded.get("__typename") == "PythonError":
            problems.append(f"{entry['name']}: failed to load: {loaded.get('message', '')[:300]}")
    return problems
