"""Retraining through the REST API against a real Dagster webserver and daemon (make run's instance config: runs
are queued, the daemon launches them in a subprocess) over tests/retrain_defs.py, a code location with
used_cars's layers as trivial assets, beside a location that fails to load. fraud has a spec but no assets."""

import time
import uuid

import pytest
from conftest import ROOT
from fastapi.testclient import TestClient
from services import DagsterStack

from api.app import create_app
from api.platform import Platform
from api.runs import RETRAIN_LAYERS, Dagster, DagsterUnreachable, retrain_keys
from api.settings import ApiSettings, key_hash
from ml_platform.serve.watcher import ChampionWatcher
from ml_platform.spec import builtin_specs

KEY = {"X-API-Key": "test-key"}
USED_CARS = builtin_specs()["used_cars"]
CHAIN = {"/".join(k) for k in retrain_keys(USED_CARS)}
STEPS = {"__".join(k) for k in retrain_keys(USED_CARS)}
PENDING = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED"}


@pytest.fixture(scope="module")
def dagster(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster")
    # beside ours, a code location that fails to load, as a broken deployment would
    (home / "broken_defs.py").write_text("raise RuntimeError('the spec directory is unreadable')\n")
    stack = DagsterStack(home, {"ml_platform": ROOT / "tests/retrain_defs.py", "broken": home / "broken_defs.py"})
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def api(dagster, tmp_path_factory):
    home = tmp_path_factory.mktemp("api")
    settings = ApiSettings(data_root=str(home / "data"), home=home, key_hashes=frozenset({key_hash("test-key")}),
                           dagster_url=dagster.url, publish=False)
    # retraining never scores: a watcher with no champion keeps Spark out
    platform = Platform(settings, watcher_for=lambda spec: ChampionWatcher(lambda: None, lambda v: None, 60))
    with TestClient(create_app(settings, platform), headers=KEY) as c:
        yield c


def test_the_api_retrains_the_chain_the_live_metrics_sensor_and_a_feedback_batch_retrain():
    from sensors.live_metrics import CHAIN, build_live_metrics_sensor

    assert tuple(CHAIN) == RETRAIN_LAYERS
    for spec in builtin_specs().values():
        targets = sorted(k.path for k in build_live_metrics_sensor(spec).asset_selection.selected_keys)
        if spec.target:  # the sensor lands the actuals (feedback); that batch triggers the chain
            assert targets == [[spec.name, "feedback"], [spec.name, "serving_deployment"]]
        else:
            assert targets == sorted(retrain_keys(spec))


def test_retrain_runs_the_chain_and_reports_its_steps(api, dagster):
    t0 = time.monotonic()
    r = api.post("/datasets/used_cars/retrain")
    assert r.status_code == 202, r.text
    body = r.json()
    run_id = body["run_id"]
    assert body["dagster_url"] == f"{dagster.url}/runs/{run_id}" and set(body["asset_selection"]) == CHAIN

    # Dagster knows the run, with the chain as its selection and the API's tag
    known = dagster.graphql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { assetSelection "
                          "{ path } tags { key value } } } }", id=run_id)["data"]["runOrError"]
    assert known["__typename"] == "Run"
    assert {"/".join(a["path"]) for a in known["assetSelection"]} == CHAIN
    assert {"key": "ml_platform/requested_by", "value": "api"} in known["tags"]
    assert {"key": "ml_platform/dataset", "value": "used_cars"} in known["tags"]

    first = api.get(f"/runs/{run_id}").json()
    assert first["status"] in PENDING and first["dagster_url"] == body["dagster_url"]
    assert set(first["asset_selection"]) == CHAIN
    assert [s["key"] for s in first["steps"]][0] == "used_cars__training_set"  # the plan, in its order
    assert {s["key"] for s in first["steps"]} == STEPS  # raw batches and cleaning are not rerun
    if first["status"] == "QUEUED":
        assert {s["status"] for s in first["steps"]} == {"NOT_STARTED"}
    statuses = [first["status"]]
    while statuses[-1] in PENDING and time.monotonic() - t0 < 120:
        time.sleep(0.5)
        r = api.get(f"/runs/{run_id}")
        assert r.status_code == 200, r.text
        statuses.append(r.json()["status"])
    run = r.json()
    assert run["status"] == "SUCCESS", (statuses, dagster.log.read_text(errors="replace")[-3000:])
    assert run["started_at"] <= run["ended_at"]
    assert {s["key"] for s in run["steps"]} == STEPS
    assert all(s["status"] == "SUCCESS" and s["started_at"] <= s["ended_at"] for s in run["steps"])
    print(f"retrain to SUCCESS in {time.monotonic() - t0:.1f} s; statuses {list(dict.fromkeys(statuses))}")


def test_unknown_dataset_and_run_are_404(api):
    r = api.post("/datasets/nope/retrain")
    assert r.status_code == 404 and "unknown dataset 'nope'" in r.json()["detail"]
    r = api.get(f"/runs/{uuid.uuid4()}")
    assert r.status_code == 404 and "has no run" in r.json()["detail"]
    r = api.get(f"/runs/{{{str(uuid.uuid4()).upper()}}}")  # another spelling of a UUID, still asked of Dagster
    assert r.status_code == 404 and "has no run" in r.json()["detail"]
    r = api.get("/runs/not-a-run")
    assert r.status_code == 404 and "UUIDs" in r.json()["detail"]


def test_a_dataset_dagster_does_not_load_is_409_with_what_it_has(api):
    r = api.post("/datasets/fraud/retrain")
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert "fraud/training_set" in detail and "ml_platform: loaded" in detail and "ML_PLATFORM_DATASETS" in detail
    assert "broken: failed to load" in detail and "the spec directory is unreadable" in detail


def test_retrain_needs_an_api_key(api):
    assert api.post("/datasets/used_cars/retrain", headers={"X-API-Key": "wrong"}).status_code == 401


def test_dagster_stopped_is_503(api, dagster):
    # last in this module: it stops the module's webserver
    dagster.stop()
    for r in (api.post("/datasets/used_cars/retrain"), api.get(f"/runs/{uuid.uuid4()}")):
        assert r.status_code == 503
        assert f"Dagster is unreachable at {dagster.url}" in r.json()["detail"]
    # the client's own path (a webserver gone between the check and the submit): its wrapped error is recognised
    with pytest.raises(DagsterUnreachable, match="Dagster is unreachable"):
        Dagster(dagster.url).submit("__ASSET_JOB", "ml_platform", "__repository__", retrain_keys(USED_CARS))
