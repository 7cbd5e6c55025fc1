"""The container image's entry point (ml_platform/roles.py): each role's program, its configuration from the
environment, usage errors, and the health check against a real listening server."""

import http.server
import os
import subprocess
import sys
import threading

import pytest
import yaml

from ml_platform import roles

ROLE = [sys.executable, "-m", "ml_platform.roles"]


@pytest.mark.parametrize("args, says", [
    (["api", "--bogus"], "unrecognized arguments: --bogus"),
    (["painter"], "invalid choice: 'painter'"),
    (["scorer"], "scorer takes a dataset"),
    (["api", "used_cars"], "api takes no dataset"),
])
def test_unknown_arguments_print_usage_and_exit_2(args, says):
    r = subprocess.run(ROLE + args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("usage: ml-platform-role") and says in r.stderr, r.stderr


def test_a_bad_store_variable_stops_the_role_before_it_starts_and_hides_the_value(tmp_path):
    env = os.environ | {"DAGSTER_HOME": str(tmp_path), "ML_PLATFORM_DAGSTER_POSTGRES_URL": "mysql://u:pw-xyz@h/d",
                        "ML_PLATFORM_ROLE_FILE": str(tmp_path / "role")}
    r = subprocess.run(ROLE + ["daemon"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "ML_PLATFORM_DAGSTER_POSTGRES_URL: it is not a postgresql:// URL" in r.stderr
    assert "pw-xyz" not in r.stderr + r.stdout and not (tmp_path / "role").exists()


def test_dagster_roles_share_one_instance_and_load_the_code_server(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ML_PLATFORM_CODE_SERVER", "code:4000")
    monkeypatch.setenv("ML_PLATFORM_DAGSTER_POSTGRES_URL", "postgresql://u:pw@db:5432/dagster")
    cmd, _ = roles.command("webserver", None)
    assert cmd[1:5] == ["-h", "0.0.0.0", "-p", "3000"] and cmd[0].endswith("dagster-webserver")
    ws = yaml.safe_load(open(cmd[-1]))
    assert ws == {"load_from": [{"grpc_server": {"host": "code", "port": 4000, "location_name": "ml_platform"}}]}
    instance = yaml.safe_load((tmp_path / "home" / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "ML_PLATFORM_DAGSTER_POSTGRES_URL"}
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert roles.command("code", None)[0][-6:] == ["-h", "0.0.0.0", "-p", "4000", "-m", "definitions"]
    monkeypatch.setenv("ML_PLATFORM_CODE_SERVER", "no-port")
    with pytest.raises(SystemExit, match="host:port"):
        roles.command("daemon", None)


def test_the_scorer_goes_to_a_spark_cluster_when_one_is_named(monkeypatch):
    monkeypatch.delenv("SPARK_MASTER_URL", raising=False)
    cmd, _ = roles.command("scorer", "used_cars")
    assert cmd[1:4] == ["-m", "spark_streaming.scorer", "used_cars"] and "--master" not in cmd
    monkeypatch.setenv("SPARK_MASTER_URL", "spark://spark-master:7077")
    assert roles.command("scorer", "used_cars")[0][-2:] == ["--master", "spark://spark-master:7077"]


def test_mlflow_gets_its_backend_through_the_environment_not_its_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("ML_PLATFORM_MLFLOW_BACKEND_URI", "postgresql://u:pw-xyz@db:5432/mlflow")
    cmd, env = roles.command("mlflow", None)
    assert "pw-xyz" not in " ".join(cmd) and env["MLFLOW_BACKEND_STORE_URI"].endswith("@db:5432/mlflow")


def test_health_checks_the_role_the_container_started_with(tmp_path, monkeypatch):
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = os.environ | {"ML_PLATFORM_API_PORT": str(server.server_port), "ML_PLATFORM_ROLE_FILE": str(tmp_path / "r")}
    (tmp_path / "r").write_text("api")
    r = subprocess.run(ROLE + ["health"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.startswith("api: healthy"), r.stdout + r.stderr
    server.shutdown()
    server.server_close()
    r = subprocess.run(ROLE + ["health", "api"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "api: unhealthy" in r.stdout


def test_dagster_commands_pass_through_as_dagster_s_helm_chart_gives_them():
    r = subprocess.run(ROLE + ["dagster", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("dagster, version 1.13"), r.stdout + r.stderr


def test_spark_on_kubernetes_pods_run_spark_s_own_commands_from_this_image():
    env = {"SPARK_DRIVER_BIND_ADDRESS": "10.1.2.3"}
    cmd, extra = roles.spark_on_kubernetes("driver", ["--properties-file", "/opt/spark/conf/spark.properties",
                                                      "--class", "org.apache.spark.deploy.PythonRunner",
                                                      "local:///app/scorer.py", "used_cars"], env)
    assert cmd[0].endswith("pyspark/bin/spark-submit") and cmd[1:5] == [
        "--conf", "spark.driver.bindAddress=10.1.2.3", "--deploy-mode", "client"] and cmd[-1] == "used_cars"
    assert extra["ML_PLATFORM_SPARK_DRIVER_HOST"] == "spark-submit"  # spark-submit's address, not loopback
    env = dict(zip(roles.EXECUTOR_ENV.values(), ["spark://d:7078", "3", "1", "app-1", "10.1.2.4", "0", "e-3"],
                   strict=True)) | {"SPARK_EXECUTOR_MEMORY": "2g", "SPARK_JAVA_OPT_1": "-Dsecond", "SPARK_JAVA_OPT_0":
                                    "-Dfirst"}
    cmd, _ = roles.spark_on_kubernetes("executor", [], env)
    assert cmd[:5] == ["java", "-Dfirst", "-Dsecond", "-Xms2g", "-Xmx2g"]
    assert cmd[cmd.index("-cp") + 1].endswith("pyspark/jars/*")
    assert cmd[cmd.index("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend") + 1:] == [
        "--driver-url", "spark://d:7078", "--executor-id", "3", "--cores", "1", "--app-id", "app-1",
        "--hostname", "10.1.2.4", "--resourceProfileId", "0", "--podName", "e-3"]
    with pytest.raises(SystemExit, match="SPARK_DRIVER_URL, .*not set"):
        roles.spark_on_kubernetes("executor", [], {"SPARK_EXECUTOR_MEMORY": "2g"})
    with pytest.raises(SystemExit, match="SPARK_DRIVER_BIND_ADDRESS is not set"):
        roles.spark_on_kubernetes("driver", [], {})


def test_spark_settings_from_the_environment_name_a_bad_line(monkeypatch):
    from spark_streaming.scorer import spark_conf_from_env

    monkeypatch.setenv("ML_PLATFORM_SPARK_CONF", "spark.executor.instances=2\n# a comment\n\nspark.a.b = c=d\n")
    assert spark_conf_from_env() == {"spark.executor.instances": "2", "spark.a.b": "c=d"}
    monkeypatch.setenv("ML_PLATFORM_SPARK_CONF", "spark.executor.instances=2\nexecutors 3\n")
    with pytest.raises(SystemExit, match="ML_PLATFORM_SPARK_CONF line 2: not spark.key=value"):
        spark_conf_from_env()


def test_the_driver_address_follows_the_environment(monkeypatch):
    from ml_platform.spark import session_conf

    monkeypatch.delenv("ML_PLATFORM_SPARK_DRIVER_HOST", raising=False)
    assert session_conf("local[1]", "a", [])["spark.driver.host"] == "127.0.0.1"
    monkeypatch.setenv("ML_PLATFORM_SPARK_DRIVER_HOST", "10.1.2.3")
    conf = session_conf("k8s://https://kubernetes.default.svc", "a", [])
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "10.1.2.3"
    monkeypatch.setenv("ML_PLATFORM_SPARK_DRIVER_HOST", "spark-submit")
    assert "spark.driver.host" not in session_conf("local[1]", "a", [])
