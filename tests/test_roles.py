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
