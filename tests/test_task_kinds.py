"""Each task kind end to end on tiny data, through the product's own Dagster assets: a shipped spec (with small
search spaces) -> landed batches -> raw, cleaned, training set, feature pipeline, models, the served model,
serving_deployment -> an MLflow champion -> predictions through the Kafka scorer and the REST API, which agree."""

import json

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from assets import build_dataset_assets
from ml_platform.data.landing import partition_key
from ml_platform.layout import landing_dir
from ml_platform.local.loadgen import stream_rows
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.serve.kafka_io import ensure_topics, read_topic
from ml_platform.serve.messages import errors, request, topic
from ml_platform.serve.watcher import registry_watcher
from ml_platform.stores import LocalStore
from ml_platform.train.registry import CHAMPION
from resources import LocalSparkResource, LocalStorage, MlflowRegistry
from spark_streaming.scorer import Status, scoring_query
from tests.test_scorer_champion import rest_client
from tests.test_serving import _run, _send
from tests.training_data import small, unused_serving_resources

SMALL = {
    "tickets": {"logistic": {"grid": {"regParam": [0.01]}}, "naive_bayes": {"grid": {"smoothing": [1.0]}},
                "gbt": {"grid": {"maxDepth": [2], "maxIter": [3]}}},
    "customers": {"kmeans": {"grid": {"k": [3, 4]}}, "gmm": {"grid": {"k": [4]}}},
    "movie_ratings": {"als": {"grid": {"rank": [6], "regParam": [0.1], "maxIter": [6]}}},
}
AFTER_CLEANING = ["training_set", "feature_pipeline", "stacked_model", "serving_deployment"]


def _platform(spec, root):
    store = LocalStore(root / "data")
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{root}/mlflow.db")
    storage = LocalStorage(root=str(store.root))
    resources = {"spark": LocalSparkResource(storage=storage, threads="2", shuffle_partitions=2),
                 "storage": storage, "registry": registry, **unused_serving_resources()}
    return store, resources, registry.tracker()


def _meta(result, key):
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: v.value for k, v in mats[-1].materialization.metadata.items()}


def _train_and_promote(spec, root, batches=(1, 2), rows=250):
    store, resources, tracker = _platform(spec, root)
    assets = build_dataset_assets(spec)
    instance = DagsterInstance.ephemeral()
    land = store.path(landing_dir(spec))
    for b in batches:
        key = partition_key(write_batch(SimConfig(spec.name, rows_per_batch=rows, seed=5), b, land, None).name)
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        assert materialize(assets[:2], partition_key=key, instance=instance, resources=resources).success
    keys = [AssetKey([spec.name, c]) for c in AFTER_CLEANING] + [
        AssetKey([spec.name, f"model_{n}"]) for n in spec.algorithms] + (
        [AssetKey([spec.name, "recommendations"])] if spec.task == "recommendation" else [])
    run = materialize(assets, selection=keys, instance=instance, resources=resources)
    assert run.success
    instance.dispose()
    return store, tracker, run


def _serve(spark, kafka, spec, tracker, rows, tmp_path):
    """The same raw rows through the Kafka scorer and through REST -> (Kafka predictions, REST results) by id, and
    the REST client for more calls (open until the test ends)."""
    served = spec
    ensure_topics(kafka.bootstrap, served.name)
    _send(kafka.bootstrap, served, [(f"r{i}", json.dumps(request(spec, f"r{i}", r)).encode())
                                    for i, r in enumerate(rows)])
    watcher = registry_watcher(spec.name, tracker.uri, 0.2)
    assert watcher.check()
    _run(scoring_query(spark, served, watcher, kafka.bootstrap, str(tmp_path / "ckpt"),
                       Status(tmp_path / "status.json", served.name), model_name=spec.name))
    preds = {m["key"]: m["value"] for m in read_topic(kafka.bootstrap, topic(served, "predictions"))}
    assert preds and [e for m in preds.values() for e in errors("predictions", m)] == []
    with rest_client(spark, served, spec.name, tracker, tmp_path) as client:
        body = client.post(f"/datasets/{served.name}/predict", json={"rows": [
            request(spec, f"r{i}", r) for i, r in enumerate(rows)]})
        assert body.status_code == 200, body.text
        extra = {}
        if spec.task == "recommendation":
            for user in (rows[0][spec.recommend.user], "nobody-ever"):
                extra[user] = client.get(f"/datasets/{served.name}/recommendations/{user}", params={"n": 5})
        else:
            extra["refused"] = client.get(f"/datasets/{served.name}/recommendations/u1")
    return preds, {r["request_id"]: r for r in body.json()["results"]}, extra


def _stream(spec, tmp_path, n=30):
    write_batch(SimConfig(spec.name, 2 * n, test_share=0.5, broken_share=0.0, seed=21), 9, tmp_path / "land",
                tmp_path / "test")
    return [r for _, r in stream_rows(tmp_path / "test")][:n]


def test_multiclass_end_to_end(spark, specs, kafka, tmp_path):
    spec = small(specs["tickets"], algorithms=SMALL["tickets"], folds=2)
    store, tracker, run = _train_and_promote(spec, tmp_path)
    champion = tracker.version_for(spec.name, CHAMPION)
    assert champion == "1"
    stacked = _meta(run, AssetKey([spec.name, "stacked_model"]))
    assert "macro_f1" in stacked["leaderboard"] and "recall by class" in stacked["leaderboard"]
    assert "data:image/png;base64" in stacked["confusion"]
    training = _meta(run, AssetKey([spec.name, "training_set"]))
    assert set(training["rows_by_class (train)"]) == set(spec.classes)
    rows = _stream(spec, tmp_path)
    preds, rest, extra = _serve(spark, kafka, spec, tracker, rows, tmp_path)
    assert extra["refused"].status_code == 409 and "task recommendation" in extra["refused"].text
    for rid, p in preds.items():
        assert p["label"] == spec.classes[int(p["prediction"])] and p["model_version"] == champion
        assert set(p["probabilities"]) == set(spec.classes)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0)
        assert p["probability"] == pytest.approx(max(p["probabilities"].values()))
        r = rest[rid]
        assert r["status"] == "scored" and r["label"] == p["label"] and r["prediction"] == p["prediction"]
    assert len(preds) == len(rows)


def test_clustering_end_to_end(spark, specs, kafka, tmp_path):
    spec = small(specs["customers"], algorithms=SMALL["customers"], folds=2)
    store, tracker, run = _train_and_promote(spec, tmp_path, rows=300)
    assert tracker.version_for(spec.name, CHAMPION) == "1"
    stacked = _meta(run, AssetKey([spec.name, "stacked_model"]))
    sizes = stacked["cluster_sizes"]
    assert "silhouette" in stacked["leaderboard"] and stacked["holdout silhouette"] > 0.2
    assert len(sizes) == stacked["holdout k"] and sum(sizes.values()) > 0
    rows = _stream(spec, tmp_path)
    preds, rest, extra = _serve(spark, kafka, spec, tracker, rows, tmp_path)
    assert extra["refused"].status_code == 409
    assert len(preds) == len(rows)
    for rid, p in preds.items():
        assert p["prediction"] == int(p["prediction"]) and 0 <= p["prediction"] < stacked["holdout k"]
        if stacked["served"] == "gmm":  # a mixture model says how sure it is of each cluster
            assert sum(p["probabilities"].values()) == pytest.approx(1.0)
        assert rest[rid]["prediction"] == p["prediction"]


def test_recommendation_end_to_end(spark, specs, kafka, tmp_path):
    spec = small(specs["movie_ratings"], algorithms=SMALL["movie_ratings"], folds=2)
    store, tracker, run = _train_and_promote(spec, tmp_path, rows=1500)
    assert tracker.version_for(spec.name, CHAMPION) == "1"
    stacked = _meta(run, AssetKey([spec.name, "stacked_model"]))
    assert "popularity" in stacked["leaderboard"] and "ndcg" in stacked["leaderboard"]
    top = _meta(run, AssetKey([spec.name, "recommendations"]))
    assert top["users"] > 0 and top["dagster/row_count"] == top["users"] * spec.recommend.top_n
    rows = _stream(spec, tmp_path)
    rows.append(dict(rows[0], **{spec.recommend.user: "nobody-ever"}))  # a user the model never saw
    preds, rest, extra = _serve(spark, kafka, spec, tracker, rows, tmp_path)
    assert len(preds) == len(rows)
    lo, hi = spec.label_range
    for rid, p in preds.items():
        assert lo <= p["prediction"] <= hi and rest[rid]["prediction"] == p["prediction"]
    assert preds[f"r{len(rows) - 1}"]["cold_start"] is True
    known, unknown = (extra[u] for u in (rows[0][spec.recommend.user], "nobody-ever"))
    assert known.status_code == 200 and unknown.status_code == 200, (known.text, unknown.text)
    assert len(known.json()["items"]) == 5 and known.json()["cold_start"] is False
    assert unknown.json()["cold_start"] is True and len(unknown.json()["items"]) == 5
