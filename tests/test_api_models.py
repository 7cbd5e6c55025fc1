"""Model routes of the REST API on a real MLflow registry (sqlite): the dataset's contract and champion metrics,
the last training's leaderboard, and the champion downloaded as a zip that mlflow.spark loads and that predicts
what the registered model predicts. An unreachable registry is a 503."""

import io
import tempfile
import zipfile

import mlflow.spark
import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from test_serving import register, year_model

from api.app import create_app
from api.platform import Platform
from api.settings import ApiSettings, key_hash
from ml_platform.serve.messages import contract
from ml_platform.serve.watcher import ChampionWatcher
from ml_platform.train.registry import Tracker

KEY = {"X-API-Key": "test-key"}


def _client(tmp_path, tracking_uri: str) -> TestClient:
    settings = ApiSettings(data_root=str(tmp_path / "data"), home=tmp_path / "home", tracking_uri=tracking_uri,
                           key_hashes=frozenset({key_hash("test-key")}), datasets=("used_cars",), publish=False)
    # these routes read the registry, not the served model: a watcher with nothing to load keeps the test cheap
    platform = Platform(settings, watcher_for=lambda spec: ChampionWatcher(lambda: None, lambda v: None, 60))
    return TestClient(create_app(settings, platform), headers=KEY)


def _result(algorithm: str, rmse: float, cv: float) -> dict:
    return {"algorithm": algorithm, "search_space": {}, "param_maps": 2, "folds": 3, "features": 40,
            "best_params": {"regParam": 0.1}, "cv_metric": "rmse", "cv_mean": cv, "cv_std": cv / 10,
            "train_seconds": 12.5, "validation_seconds": 1.0, "holdout": {"rmse": rmse, "mae": rmse / 2, "r2": 0.8}}


@pytest.fixture
def trained(spark, tmp_path):
    """One training the way the jobs log it: a parent run, base model runs (one failed), a registered stack
    promoted to champion; and a newer challenger registered from another run."""
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    summary = {"version": "v-20260101", "batches": ["b1", "b2"], "data_hash": "abc", "rows": 100, "train_rows": 80,
               "holdout_rows": 20}
    parent = tracker.parent_run("used_cars", summary, {})
    tracker.log_model_run(parent, "used_cars", _result("gbt", 3000.0, 0.30), {})
    tracker.log_model_run(parent, "used_cars", _result("linear", 2500.0, 0.25), {})
    tracker.log_failed_model(parent, "used_cars", "xgboost", "xgboost: out of memory", {})
    model = year_model(2.0)
    example = spark.createDataFrame([(2015.0,)], "year double")
    v1 = tracker.register_stack(parent, "used_cars", model, example.toPandas(),
                                model.transform(example).select("prediction").toPandas(),
                                {"rmse": 2400.0, "r2": 0.85}, {"checks": "passed", "training_version": "v-20260101",
                                                               "served_model": "linear"})
    tracker.promote("used_cars", v1)
    v2 = register(spark, tracker, "used_cars", year_model(3.0), promote=False)
    return tracker, v1, v2


def test_dataset_info_and_leaderboard(trained, tmp_path):
    tracker, v1, v2 = trained
    with _client(tmp_path, tracker.uri) as c:
        r = c.get("/datasets/used_cars")
        assert r.status_code == 200, r.text
        info = r.json()
        assert (info["task"], info["target"], info["key"]) == ("regression", "price", "listing_id")
        assert info["champion"]["version"] == v1 and info["champion"]["holdout"] == {"rmse": 2400.0, "r2": 0.85}
        assert info["champion"]["training_version"] == "v-20260101" and info["champion"]["checks"] == "passed"
        assert info["challenger"]["version"] == v2 and info["serving_version"] is None
        cols = {col["name"]: col for col in info["input_columns"]}
        assert "price" not in cols and len(cols) == 65
        assert cols["year"]["required"] and cols["year"]["model_reads"] and cols["year"]["type"] == "double"
        assert cols["listed_date"]["model_reads"]  # only through the derived `age`
        assert not cols["description"]["model_reads"] and cols["description"]["outputs"] == []
        assert not cols["vin"]["model_reads"] and not cols["bed"]["model_reads"]  # free text; excluded by the spec
        assert cols["power"]["outputs"] == ["power_hp", "power_rpm"] and cols["power"]["units"] == ["hp", "rpm"]
        fields = {f["name"]: f for f in info["request_fields"]}
        assert fields["request_id"]["required"] and "printable ASCII" in fields["request_id"]["rule"]
        assert info["request_contract"] == contract("request")

        board = c.get("/datasets/used_cars/leaderboard").json()
        assert board["training_version"] == "v-20260101" and board["primary_metric"] == "rmse"
        assert [(m["algorithm"], m["status"]) for m in board["models"]] == [
            ("linear", "finished"), ("gbt", "finished"), ("xgboost", "failed")]
        linear = board["models"][0]
        assert linear["holdout"] == {"rmse": 2500.0, "mae": 1250.0, "r2": 0.8} and linear["cv_metric"] == "rmse"
        assert linear["cv_mean"] == 0.25 and linear["cv_std"] == pytest.approx(0.025)
        assert linear["train_seconds"] == 12.5 and board["models"][2]["error"] == "xgboost: out of memory"
        assert board["stack"] == {"holdout": {"rmse": 2400.0, "r2": 0.85}, "served": "linear", "model_versions": [v1]}

        assert c.get("/datasets/nope").status_code == 404
        assert c.get("/datasets/nope/leaderboard").status_code == 404


def test_download_loads_with_mlflow_and_predicts_the_same(spark, trained, tmp_path, monkeypatch):
    tracker, v1, v2 = trained
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the route builds its zip
    row = spark.createDataFrame([(2012.0,)], "year double")
    with _client(tmp_path, tracker.uri) as c:
        for version, query in ((v1, ""), (v2, f"?version={v2}")):
            r = c.get(f"/datasets/used_cars/model/download{query}")
            assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
            assert f'filename="used_cars-v{version}.zip"' in r.headers["content-disposition"]
            z = zipfile.ZipFile(io.BytesIO(r.content))
            assert "MLmodel" in z.namelist() and any(n.startswith("sparkml/") for n in z.namelist())
            out = tmp_path / f"unzipped-{version}"
            z.extractall(out)
            loaded = mlflow.spark.load_model(str(out))
            got = loaded.transform(row).first()["prediction"]
            assert got == tracker.load("used_cars", version).transform(row).first()["prediction"]
            assert got == 2012.0 * (2.0 if version == v1 else 3.0)
            assert list(scratch.glob("model-used_cars-*")) == []  # the zip's temp folder is gone once sent
        r = c.get("/datasets/used_cars/model/download?version=99")
        assert r.status_code == 404 and "not found" in r.json()["detail"]
        assert c.get("/datasets/used_cars/model/download?version=0").status_code == 422


def test_unreachable_registry_is_503(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with _client(tmp_path, f"http://127.0.0.1:{free_port()}") as c:
        for path in ("/datasets/used_cars", "/datasets/used_cars/leaderboard", "/datasets/used_cars/model/download"):
            r = c.get(path)
            assert r.status_code == 503 and "MLflow registry" in r.json()["detail"], (path, r.text)
