"""The API fuzzed from its own OpenAPI schema (schemathesis, property-based): for every operation and generated
input, including malformed ones, no 5xx and every response matches the schema. The app runs under a real uvicorn
on a loopback port with a real MLflow registry and a real prediction store (dynalite). Retraining and run status
need a Dagster webserver and are fuzzed by nothing here: tests/test_api_runs.py covers them against a real one."""

import dataclasses
import threading
import time

import pytest
import schemathesis
import uvicorn
from conftest import free_port
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from store_service import dynalite  # noqa: F401 - the session fixture

from api.app import create_app
from api.platform import Platform
from api.settings import ApiSettings, key_hash
from tests.test_serving import register, year_model

KEY = "fuzz-key-0123456789"
SKIP = ("/datasets/{dataset}/retrain", "/runs/{run_id}")


@pytest.fixture(scope="module")
def api_url(spark, specs, mlflow_server, dynalite, tmp_path_factory):  # noqa: F811
    home = tmp_path_factory.mktemp("fuzz")
    spec = dataclasses.replace(specs["used_cars"], name="t_fuzz")
    from ml_platform.train.registry import Tracker

    register(spark, Tracker(mlflow_server.uri), spec.name, year_model(2.0))
    port = free_port()
    s = ApiSettings(data_root=str(home / "data"), home=home, tracking_uri=mlflow_server.uri,
                    key_hashes=frozenset({key_hash(KEY)}), publish=False, store_endpoint=dynalite.endpoint,
                    store_table="fuzz_predictions", dagster_url=f"http://127.0.0.1:{free_port()}",
                    rate_per_minute=100_000, max_rows=20, batch_direct_rows=20)
    platform = Platform(s, spark=spark, specs={spec.name: spec})
    platform.store.ensure_table()
    server = uvicorn.Server(uvicorn.Config(create_app(s, platform), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 120
    while True:
        try:
            if requests.get(f"{url}/ready", headers={"X-API-Key": KEY}, timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the API did not become ready"
        time.sleep(0.5)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def test_no_input_gets_a_5xx_and_every_response_matches_the_schema(api_url):
    """Every operation, positive and negative generated inputs (schemathesis's strategies driven by hypothesis
    directly: its pytest plugin does not load under this pytest). A failure names the operation and the case."""
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json").exclude(path=list(SKIP))
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    failures = {}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(base_url=api_url, headers={"X-API-Key": KEY}, timeout=120,
                                   checks=[not_a_server_error, response_schema_conformance,
                                           status_code_conformance, content_type_conformance])

        try:
            check()
        except Exception as e:  # collect every operation's failure, then fail once with all of them
            failures[op.label] = str(e)[:1500]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
