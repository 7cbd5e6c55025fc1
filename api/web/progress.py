"""Training progress as Dagster records it, over its GraphQL API: per asset of a dataset's chain, whether it is
queued, running (with the step's newest log line, e.g. a model's "started: 2 parameter maps x 3 folds"), done or
failed (with the root cause), and the runs that do it, with their elapsed time and their page in the Dagster UI.

A model's cross-validation is one Spark call (CrossValidator fits every fold and setting), so progress inside it is
its phase from the step's log: started (maps x folds), CV done, scoring, finished; not a share of fits."""

from __future__ import annotations

import time

from ml_platform.local.dagster_gql import DagsterError, failure_message, graphql

LATEST = """query Latest($keys: [AssetKeyInput!]!) { assetsLatestInfo(assetKeys: $keys) {
  assetKey { path } inProgressRunIds unstartedRunIds
  latestRun { id status startTime endTime }
  latestMaterialization { timestamp runId } } }"""
RUN = """query Run($id: ID!) { runOrError(runId: $id) { __typename ... on Run { runId status startTime endTime
  stepStats { stepKey status startTime endTime } } } }"""
LOGS = """query Logs($id: ID!) { logsForRun(runId: $id, limit: 2000) { __typename ... on EventConnection {
  events { __typename ... on MessageEvent { message stepKey timestamp level } } } } }"""
ACTIVE = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED"}


def latest(url: str, keys: list[list[str]]) -> dict[tuple[str, ...], dict]:
    """asset key -> its latest-info node, for many datasets in one query."""
    data = graphql(url, LATEST, keys=[{"path": k} for k in keys])
    return {tuple(n["assetKey"]["path"]): n for n in data["assetsLatestInfo"]}


def state_of(info: dict | None) -> str:
    """One word for a dataset's training from its chain's latest infos: training, queued, failed, done, never."""
    if not info:
        return "never"
    if any(n["inProgressRunIds"] for n in info.values()):
        return "training"
    if any(n["unstartedRunIds"] for n in info.values()):
        return "queued"
    runs = [n["latestRun"] for n in info.values() if n.get("latestRun")]
    if not runs:
        return "never"
    newest = max(runs, key=lambda r: r.get("startTime") or 0)
    return "failed" if newest["status"] == "FAILURE" else "done" if newest["status"] == "SUCCESS" else \
        newest["status"].lower()


def _logs(url: str, run_id: str, dataset: str) -> tuple[dict[str, str], dict[str, str]]:
    """(step key -> its newest log line, model asset -> its newest line): models train in one step, each line
    naming its model (`<ds>/model_<algorithm>: started: 2 parameter maps x 3 folds`)."""
    conn = graphql(url, LOGS, id=run_id)["logsForRun"]
    steps: dict[str, str] = {}
    models: dict[str, str] = {}
    prefix = f"{dataset}/model_"
    for e in conn.get("events") or []:
        if e["__typename"] != "LogMessageEvent" or not e.get("stepKey") or not e.get("message"):
            continue
        steps[e["stepKey"]] = e["message"]
        if e["message"].startswith(prefix):
            asset, _, said = e["message"].partition(": ")
            models[asset.split("/", 1)[1]] = said
    return steps, models


def step_key(dataset: str, asset: str) -> str:
    """The step that materializes an asset: every model of a dataset trains in one step, `<ds>__models`."""
    return f"{dataset}__models" if asset.startswith("model_") else f"{dataset}__{asset}"


STEP_STATE = {"IN_PROGRESS": "running", "SUCCESS": "done", "FAILURE": "failed", "SKIPPED": "skipped"}


def _model_state(line: str | None, step_state: str) -> str:
    if step_state != "running" or not line:
        return step_state
    return "done" if line.startswith("finished") else "failed" if line.startswith("failed") else "running"


def progress(url: str, dataset: str, assets: list[str], now: float | None = None) -> dict:
    """The chain's rows and the runs doing it; raises DagsterError / DagsterUnreachable."""
    now = now or time.time()
    info = latest(url, [[dataset, a] for a in assets])
    active = list(dict.fromkeys(r for n in info.values() for r in n["inProgressRunIds"] + n["unstartedRunIds"]))
    finished = list(dict.fromkeys(n["latestRun"]["id"] for n in info.values() if n.get("latestRun")))
    runs, steps, lines, model_lines = {}, {}, {}, {}
    # the latest finished runs first, so a step of a run in progress takes the place of the same step's last run
    for run_id in [r for r in finished if r not in active][:4] + active[:4]:
        run = graphql(url, RUN, id=run_id)["runOrError"]
        if run["__typename"] != "Run":
            continue
        if run_id in active:
            runs[run_id] = run
        for s in run["stepStats"]:
            steps[s["stepKey"]] = s | {"run_id": run_id}
        if run["status"] == "STARTED":
            got_steps, got_models = _logs(url, run_id, dataset)
            lines |= got_steps
            model_lines |= got_models
    failures: dict[str, str] = {}
    rows = []
    for a in assets:
        n = info.get((dataset, a)) or {}
        key = step_key(dataset, a)
        row = {"asset": a, "state": "not run yet", "detail": None, "run_id": None, "seconds": None}
        last, mat = n.get("latestRun"), n.get("latestMaterialization")
        pending = n.get("inProgressRunIds") or n.get("unstartedRunIds")
        if key in steps and (steps[key]["run_id"] in runs or not pending):  # a newer run redoes a finished step
            s = steps[key]
            state = STEP_STATE.get(s["status"] or "", "running")
            detail = model_lines.get(a) if a.startswith("model_") else lines.get(key)
            start, end = s.get("startTime"), s.get("endTime")
            row |= {"run_id": s["run_id"], "state": _model_state(detail, state) if a.startswith("model_") else state,
                    "detail": detail, "seconds": round((end or now) - start) if start else None}
        elif n.get("inProgressRunIds"):  # planned in a run that is running: its step has not started yet
            row |= {"state": "waiting", "run_id": n["inProgressRunIds"][0]}
        elif n.get("unstartedRunIds"):
            row |= {"state": "queued", "run_id": n["unstartedRunIds"][0]}
        elif last:
            row |= {"run_id": last["id"], "state": {"SUCCESS": "done", "FAILURE": "failed", "CANCELED": "canceled"}
                    .get(last["status"], last["status"].lower())}
            if last.get("startTime") and last.get("endTime"):
                row["seconds"] = round(last["endTime"] - last["startTime"])
        elif mat:
            row["state"] = "done"
        if row["state"] == "failed" and row["run_id"] and not row["detail"]:
            if row["run_id"] not in failures:
                try:
                    failures[row["run_id"]] = failure_message(url, row["run_id"])
                except DagsterError as e:
                    failures[row["run_id"]] = f"(the failure could not be read: {e})"
            row["detail"] = failures[row["run_id"]]
        if mat:
            row["materialized"] = float(mat["timestamp"]) / 1000
        rows.append(row)
    run_rows = [{"run_id": r["runId"], "status": r["status"],
                 "seconds": round((r.get("endTime") or now) - r["startTime"]) if r.get("startTime") else None}
                for r in runs.values()]
    return {"state": state_of(info), "assets": rows, "runs": run_rows}
