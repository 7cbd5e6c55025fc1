"""The production stores (ml_platform.metadata_stores): Dagster's runs, event log and schedules on a real
PostgreSQL server, and MLflow's tracking and registry on PostgreSQL with artifacts on S3 (MinIO), chosen by the
environment alone, with no password written to a file, a command line or a message."""

from pathlib import Path

import pytest
import yaml

from ml_platform.local.prepare import dagster_home
from ml_platform.metadata_stores import (
    DAGSTER_POSTGRES,
    MLFLOW_ARTIFACTS,
    MLFLOW_BACKEND,
    StoreConfigError,
    dagster_storage_yaml,
    describe,
    mlflow_server_store,
)

SECRET_URL = "postgresql://platform:s3cr3t-pw@db.internal:5432/dagster"


def test_the_defaults_are_sqlite_and_a_folder(tmp_path):
    assert dagster_storage_yaml({}) == ""
    args, env, where = mlflow_server_store(tmp_path, {})
    assert env == {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"}
    assert args == ["--artifacts-destination", str(tmp_path / "mlflow" / "artifacts")]


def test_postgres_is_named_by_variable_and_the_password_is_never_written_or_shown(tmp_path, monkeypatch):
    monkeypatch.setenv(DAGSTER_POSTGRES, SECRET_URL)
    text = (dagster_home(tmp_path) / "dagster.yaml").read_text()
    assert yaml.safe_load(text)["storage"] == {"postgres": {"postgres_url": {"env": DAGSTER_POSTGRES}}}
    assert "s3cr3t" not in text and "db.internal" not in text
    args, env, where = mlflow_server_store(tmp_path, {MLFLOW_BACKEND: SECRET_URL.replace("dagster", "mlflow"),
                                                      MLFLOW_ARTIFACTS: "s3://bucket/mlflow"})
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("/mlflow") and "s3cr3t" not in " ".join(args)
    assert where == "PostgreSQL at db.internal:5432/mlflow, artifacts in s3://bucket/mlflow"
    assert describe(SECRET_URL) == "PostgreSQL at db.internal:5432/dagster"


@pytest.mark.parametrize("value, says", [
    ("mysql://u:s3cr3t-pw@h/db", "not a postgresql:// URL"),
    ("postgresql://u:s3cr3t-pw@/db", "names no host"),
    ("postgresql://u:s3cr3t-pw@h:5432", "names no database"),
])
def test_a_bad_store_url_names_the_variable_and_hides_the_value(value, says):
    with pytest.raises(StoreConfigError) as e:
        dagster_storage_yaml({DAGSTER_POSTGRES: value})
    assert str(e.value).startswith(DAGSTER_POSTGRES) and says in str(e.value) and "s3cr3t" not in str(e.value)


def test_mlflow_artifacts_go_to_a_folder_or_s3_only(tmp_path):
    for bad, says in [("gs://b/p", "not gs://"), ("s3:///prefix", "names no bucket")]:
        with pytest.raises(StoreConfigError, match=says):
            mlflow_server_store(tmp_path, {MLFLOW_ARTIFACTS: bad})


def test_a_materialization_is_recorded_in_postgres_and_seen_by_a_second_instance(postgres, tmp_path, monkeypatch):
    from dagster import AssetKey, DagsterInstance, asset, materialize

    monkeypatch.setenv(DAGSTER_POSTGRES, postgres.url("dagster"))
    home = dagster_home(tmp_path)
    assert postgres.password not in (home / "dagster.yaml").read_text()

    @asset(key_prefix=["pg_check"])
    def rows() -> int:
        return 3

    with DagsterInstance.from_config(str(home)) as webserver:
        assert type(webserver.run_storage).__name__ == "PostgresRunStorage"
        result = materialize([rows], instance=webserver)
        assert result.success
    # what another replica (a second webserver, the daemon) reads: the same run and materialization, from the server
    with DagsterInstance.from_config(str(home)) as other:
        run = other.get_run_by_id(result.run_id)
        assert run is not None and run.is_success
        event = other.get_latest_materialization_event(AssetKey(["pg_check", "rows"]))
        assert event is not None and event.run_id == result.run_id
    stored = postgres.sql(f"SELECT status FROM runs WHERE run_id = '{result.run_id}'", db="dagster")
    assert stored == [("SUCCESS",)]
    events = postgres.sql("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                          f"AND run_id = '{result.run_id}'", db="dagster")
    assert events == [("1",)]


def test_a_model_is_registered_in_postgres_with_its_artifacts_on_s3(postgres, minio, tmp_path):
    import mlflow
    import pandas as pd
    from services import MlflowServer

    # MinIO's endpoint and keys given explicitly: another test may have pointed the session's S3 variables elsewhere
    server = MlflowServer(tmp_path, env=minio.env() | {MLFLOW_BACKEND: postgres.url("mlflow"),
                                                       MLFLOW_ARTIFACTS: "s3://platform/mlflow-artifacts"})
    try:
        cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
        assert postgres.password not in cmdline and "--backend-store-uri" not in cmdline
        assert postgres.password not in server.log.read_text(errors="replace")

        class Doubler(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input):
                return model_input["x"] * 2

        # the registry URI is process-wide in MLflow and the champion watcher sets it (serve/watcher.py): point
        # both at this server for the test, then put back exactly what was there
        from mlflow.tracking._model_registry import utils as registry
        from mlflow.tracking._tracking_service import utils as tracking

        saved = (tracking._tracking_uri, registry._registry_uri)
        mlflow.set_tracking_uri(server.uri)
        mlflow.set_registry_uri(server.uri)
        try:
            mlflow.set_experiment("pg-check")
            with mlflow.start_run() as run:
                mlflow.log_metric("rmse", 1.5)
                info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(), pip_requirements=[],
                                               registered_model_name="pg_check_model")
            loaded = mlflow.pyfunc.load_model("models:/pg_check_model/1")
            assert list(loaded.predict(pd.DataFrame({"x": [1, 4]}))) == [2, 8]
        finally:
            tracking._tracking_uri, registry._registry_uri = saved
        assert postgres.sql("SELECT name, version FROM model_versions", db="mlflow") == [("pg_check_model", "1")]
        assert postgres.sql(f"SELECT value FROM latest_metrics WHERE run_uuid = '{run.info.run_id}' "
                            "AND key = 'rmse'", db="mlflow") == [("1.5",)]
        keys = [o["Key"] for o in minio.client().list_objects_v2(Bucket="platform", Prefix="mlflow-artifacts/")
                .get("Contents", [])]
        assert any(k.endswith("MLmodel") for k in keys), keys
        assert str(info.registered_model_version) == "1"
    finally:
        server.stop()
