"""A real stacked champion through the Kafka scorer: trained by the product's own functions (training set, feature
pipeline, two base models with out-of-fold scores, the meta-model), registered and promoted in a real MLflow
registry, served from Kafka; its predictions equal the same PipelineModel applied in batch to the same rows
cleaned the batch way."""

import contextlib
import dataclasses
import json
import time

from fastapi.testclient import TestClient
from pyspark.ml import PipelineModel
from pyspark.sql.types import StringType, StructField, StructType

from api.app import create_app
from api.platform import Platform
from api.settings import ApiSettings, key_hash
from ml_platform.data.cleaning import clean_batch
from ml_platform.local.loadgen import stream_rows
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.serve.explain import feature_fields, training_medians
from ml_platform.serve.kafka_io import ensure_topics, read_topic
from ml_platform.serve.messages import errors, request, topic
from ml_platform.serve.watcher import registry_watcher
from ml_platform.stores import LocalStore
from ml_platform.train.features import build_feature_pipeline
from ml_platform.train.models import train_models
from ml_platform.train.registry import CHAMPION, Tracker
from ml_platform.train.release import stack_and_register
from ml_platform.train.training_set import build_training_set
from spark_streaming.scorer import Status, scoring_query
from tests.test_serving import _run, _send
from tests.training_data import land_batches, small


@contextlib.contextmanager
def rest_client(spark, served, model_name: str, tracker, tmp_path):
    """The REST API on this process's Spark, serving `served` from the registered model `model_name`, once ready."""
    settings = ApiSettings(data_root=str(tmp_path / "data"), home=tmp_path, tracking_uri=tracker.uri,
                           key_hashes=frozenset({key_hash("k")}), publish=False)
    platform = Platform(settings, spark=spark, specs={served.name: served},
                        watcher_for=lambda s: registry_watcher(model_name, tracker.uri, 0.2))
    with TestClient(create_app(settings, platform), headers={"X-API-Key": "k"}) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.2)
        yield client


def test_a_trained_stacked_champion_scores_from_kafka_as_in_batch(spark, specs, kafka, tmp_path):
    spec = small(specs["used_cars"], algorithms={"linear": {"grid": {"regParam": [0.01]}},
                                                 "random_forest": {"grid": {"numTrees": [5], "maxDepth": [3]}}},
                 folds=2)
    store = LocalStore(tmp_path / "data")
    land_batches(spark, store, spec, [1], rows=300)
    build_training_set(spark, store, spec, "v1")
    build_feature_pipeline(spark, store, spec, "v1")
    results = train_models(spark, store, spec, "v1", list(spec.algorithms), 2, log=lambda _: None)
    assert not [n for n, r in results.items() if isinstance(r, Exception)], results
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    stack = stack_and_register(spark, store, tracker, spec, "v1", {"test": "stacked-champion"})
    tracker.promote(spec.name, stack["model_version"])
    assert tracker.version_for(spec.name, CHAMPION) == stack["model_version"]
    model = PipelineModel.load(stack["path"])
    names = [type(s).__name__ for s in model.stages]
    # the stack, or its best member alone when the stack does not win: either way one pipeline ending in Blend
    members = {"LinearRegressionModel", "RandomForestRegressionModel"} & set(names)
    assert len(names) >= 5 and names[-1] == "Blend" and (members == {
        "LinearRegressionModel", "RandomForestRegressionModel"} if stack["served"] == "stacked" else len(members) == 1)

    # requests: the simulator's held-out stream, raw as in the files; served under their own topics
    write_batch(SimConfig("used_cars", 60, test_share=0.5, broken_share=0.0, seed=21), 9, tmp_path / "land",
                tmp_path / "test")
    rows = [r for _, r in stream_rows(tmp_path / "test")][:40]
    served = dataclasses.replace(spec, name="t_stacked")
    ensure_topics(kafka.bootstrap, served.name)
    _send(kafka.bootstrap, served, [(f"s{i}", json.dumps(request(spec, f"s{i}", r)).encode())
                                    for i, r in enumerate(rows)])
    watcher = registry_watcher(spec.name, tracker.uri, 0.2)
    assert watcher.check() and watcher.take().version == stack["model_version"]
    status = Status(tmp_path / "status.json", served.name)
    _run(scoring_query(spark, served, watcher, kafka.bootstrap, str(tmp_path / "ckpt"), status,
                       model_name=spec.name))
    preds = {m["key"]: m["value"] for m in read_topic(kafka.bootstrap, topic(served, "predictions"))}
    assert [e for m in preds.values() for e in errors("predictions", m)] == []
    assert {m["model_version"] for m in preds.values()} == {stack["model_version"]}

    # the batch way: the same raw rows as strings, cleaned by the batch cleaning, through the same PipelineModel
    schema = StructType([StructField(c, StringType()) for c in spec.column_names])
    raw = spark.createDataFrame([tuple(r.get(c) for c in spec.column_names) for r in rows], schema)
    batch = {r[spec.key]: r["prediction"] for r in model.transform(clean_batch(raw, spec))
             .select(spec.key, "prediction").collect()}
    by_request = {f"s{i}": r[spec.key].strip() for i, r in enumerate(rows)}  # the key is a string column
    compared = [rid for rid in preds if by_request[rid] in batch]
    assert len(compared) >= 0.8 * len(rows) and set(compared) == set(preds)
    worst = max(abs(preds[rid]["prediction"] - batch[by_request[rid]]) for rid in compared)
    assert worst <= 1e-9, worst

    # the REST API, on the same serving core and the same registered version: the same rows, the same answers
    with rest_client(spark, served, spec.name, tracker, tmp_path) as client:
        body = client.post(f"/datasets/{served.name}/predict", json={"rows": [
            request(spec, f"s{i}", r) for i, r in enumerate(rows)]}).json()
        # explanations on request: the oldest and the newest car, each field's contribution to its price
        years = {i: float(r["year"]) for i, r in enumerate(rows)}
        pick = [min(years, key=years.get), max(years, key=years.get)]
        explained = client.post(f"/datasets/{served.name}/predict", json={"explain": True, "rows": [
            request(spec, f"e{i}", rows[i]) for i in pick]}).json()["results"]
    rest = {r["request_id"]: r for r in body["results"]}
    assert set(rest) == {f"s{i}" for i in range(len(rows))}
    assert {rid for rid, r in rest.items() if r["status"] == "scored"} == set(preds)
    for rid, p in preds.items():
        assert rest[rid]["prediction"] == p["prediction"] and rest[rid]["model_version"] == p["model_version"]
    medians = training_medians(model)
    fields = set(feature_fields(spec))
    for i, res in zip(pick, explained, strict=True):
        ex = res["explanation"]
        assert res["prediction"] == rest[f"s{i}"]["prediction"] and ex["model_version"] == res["model_version"]
        assert set(ex["contributions"]) <= fields and "year" in ex["contributions"] and not ex["not_explained"]
        # a car older than the training median is worth less for it, a newer one more
        if years[i] < medians["year"] - 2:
            assert ex["contributions"]["year"] < 0, (years[i], ex)
        if years[i] > medians["year"] + 2:
            assert ex["contributions"]["year"] > 0, (years[i], ex)
    assert years[pick[0]] < medians["year"] - 2 < medians["year"] + 2 < years[pick[1]]
