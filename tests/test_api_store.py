"""REST predictions reach the prediction store through the prediction log, as Kafka ones do: the API publishes to
`<ds>.predictions`, the store writer (a real process) writes them to the store (dynalite), an actual sent later
joins them, and GET /datasets/{ds}/predictions/{request_id} answers with the version, the input's hash and the
actual."""

import dataclasses
import hashlib
import json

from fastapi.testclient import TestClient
from store_service import dynalite  # noqa: F401 - the session fixture
from test_store import start_writer

from api.app import create_app
from api.platform import Platform
from api.settings import ApiSettings, key_hash
from ml_platform.local.loadgen import stream_rows
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.local.supervisor import stop_pid
from ml_platform.serve.kafka_io import ensure_topics, producer
from ml_platform.serve.messages import actual, encode, request, topic
from ml_platform.train.registry import Tracker
from tests.test_api import wait_for
from tests.test_serving import register, year_model


def test_rest_predictions_and_their_actuals_are_looked_up_from_the_store(spark, specs, kafka, dynalite,  # noqa: F811
                                                                         mlflow_server, tmp_path):
    spec = dataclasses.replace(specs["used_cars"], name="t_api_store")
    ensure_topics(kafka.bootstrap, spec.name)
    v1 = register(spark, Tracker(mlflow_server.uri), spec.name, year_model(2.0))
    table = "api_store_predictions"
    settings = ApiSettings(data_root=str(tmp_path / "data"), home=tmp_path, tracking_uri=mlflow_server.uri,
                           bootstrap=kafka.bootstrap, key_hashes=frozenset({key_hash("k")}),
                           store_endpoint=dynalite.endpoint, store_table=table)
    platform = Platform(settings, spark=spark, specs={spec.name: spec})
    platform.store.ensure_table()
    writer = start_writer(spec.name, kafka, dynalite, table, tmp_path / "writer.json", tmp_path / "writer.log")
    try:
        with TestClient(create_app(settings, platform), headers={"X-API-Key": "k"}) as client:
            wait_for(lambda: client.get("/ready").status_code == 200, what="/ready")
            write_batch(SimConfig("used_cars", 20, test_share=0.5, broken_share=0.0, seed=9), 1, tmp_path / "land",
                        tmp_path / "test")
            raw = next(r for _, r in stream_rows(tmp_path / "test"))
            row = request(spec, "store-1", raw, "2026-11-30T10:00:00.000Z")
            body = client.post(f"/datasets/{spec.name}/predict", json={"rows": [row]}).json()
            scored = body["results"][0]
            assert scored["status"] == "scored", scored
            assert client.get(f"/datasets/{spec.name}/predictions/store-1").status_code in (200, 404)
            wait_for(lambda: client.get(f"/datasets/{spec.name}/predictions/store-1").status_code == 200,
                     seconds=90, what="the prediction in the store")
            p = producer(kafka.bootstrap)
            p.send(topic(spec, "actuals"), key="store-1", value=encode("actuals", actual(
                "store-1", 30000.0, "2026-11-30T10:00:05.000Z")))
            p.flush()
            wait_for(lambda: client.get(f"/datasets/{spec.name}/predictions/store-1").json()["actual"] is not None,
                     seconds=90, what="the actual in the store")
            found = client.get(f"/datasets/{spec.name}/predictions/store-1").json()
            r = client.get(f"/datasets/{spec.name}/predictions/never-sent")
            assert r.status_code == 404 and "never-sent" in r.json()["detail"]
    finally:
        stop_pid(writer.pid)
    assert found["actual"] == 30000.0 and found["request_id"] == "store-1"
    [pred] = found["predictions"]
    assert pred["model_version"] == v1 and pred["served"] is True and pred["prediction"] == 2.0 * float(raw["year"])
    # the hash is of the request's bytes exactly as the serving core received them
    sent = json.dumps(row, ensure_ascii=False).encode()
    assert pred["input_sha256"] == scored["input_sha256"] == hashlib.sha256(sent).hexdigest()
