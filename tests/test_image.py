"""The container image (deploy/Dockerfile, built by `make image` with buildah): its configuration, its entry
point's usage errors, and two roles really serving from it under podman (host network, loopback ports only)."""

import json
import os
import subprocess
import time
import urllib.request

import pytest
from conftest import ROOT, free_port

pytestmark = pytest.mark.deploy

IMAGE = os.environ.get("IMAGE", "localhost/ml-platform:0.1.0")
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy" / "containers" / "containers.conf"))


def podman(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def http(url: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def wait_http(url: str, container: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while http(url)[0] != 200:
        if time.monotonic() > deadline or podman("container", "exists", container).returncode:
            logs = podman("logs", container).stdout + podman("logs", container).stderr
            pytest.fail(f"{container} did not answer {url}:\n{logs[-3000:]}")
        time.sleep(1)


def test_the_image_runs_unprivileged_with_one_health_check_for_every_role():
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["tini", "--", "ml-platform-role"]
    assert info["Healthcheck"]["Test"] == ["CMD", "ml-platform-role", "health"]  # podman keeps it beside Config
    r = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "id", IMAGE, "-u")
    assert r.returncode == 0 and r.stdout.strip() == "10001"
    r = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "java", IMAGE, "-version")
    assert r.returncode == 0 and 'version "17' in r.stderr, r.stderr
    assert info["Size"] < 3.5e9, f"the image is {info['Size'] / 1e9:.2f} GB"


@pytest.mark.parametrize("args, says", [
    (["--bogus"], "usage: ml-platform-role"),
    (["painter"], "invalid choice: 'painter'"),
    (["scorer"], "scorer takes a dataset"),
    (["health"], "no role to check"),
])
def test_entry_points_print_usage_and_exit_nonzero_on_unknown_arguments(args, says):
    r = podman("run", "--rm", "--no-healthcheck", IMAGE, *args)
    assert r.returncode == 2 and says in r.stderr, r.stdout + r.stderr


def test_dagster_s_own_commands_run_as_its_helm_chart_gives_them():
    r = podman("run", "--rm", "--no-healthcheck", IMAGE, "dagster", "--version")
    assert r.returncode == 0 and "dagster, version 1.13.27" in r.stdout, r.stdout + r.stderr


def test_the_mlflow_and_api_roles_serve_and_report_healthy():
    mlflow_port, api_port = free_port(), free_port()
    names = [f"mlp-test-mlflow-{mlflow_port}", f"mlp-test-api-{api_port}"]
    common = ["run", "-d", "--rm", "--no-healthcheck", "--network", "host", "-e", "ML_PLATFORM_BIND=127.0.0.1"]
    try:
        r = podman(*common, "--name", names[0], "-e", f"ML_PLATFORM_MLFLOW_PORT={mlflow_port}", IMAGE, "mlflow")
        assert r.returncode == 0, r.stderr
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", names[0])
        r = podman(*common, "--name", names[1], "-e", f"ML_PLATFORM_API_PORT={api_port}",
                   "-e", f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}",
                   "-e", "ML_PLATFORM_API_KEYS=test-key-9f2",
                   "-e", "ML_PLATFORM_DATA=/var/lib/ml-platform/data", "-e", "SPARK_LOCAL_IP=127.0.0.1",
                   "-e", "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1", IMAGE, "api")
        assert r.returncode == 0, r.stderr
        wait_http(f"http://127.0.0.1:{api_port}/health", names[1])
        for name, role in zip(names, ("mlflow", "api"), strict=True):
            r = podman("exec", name, "ml-platform-role", "health")  # the image's HEALTHCHECK command
            assert r.returncode == 0 and r.stdout.startswith(f"{role}: healthy"), r.stdout + r.stderr
        # no champion in this empty MLflow: a readiness probe is told to wait, a keyed caller is told why
        assert http(f"http://127.0.0.1:{api_port}/ready") == (503, '{"ready":false}')
        status, body = http(f"http://127.0.0.1:{api_port}/ready", {"X-API-Key": "test-key-9f2"})
        assert status == 503 and json.loads(body)["datasets"]["used_cars"]["error"] == "no champion loaded yet"
        logs = podman("logs", names[1])
        assert "test-key-9f2" not in logs.stdout + logs.stderr
    finally:
        for name in names:
            podman("rm", "-f", "-t", "5", name)


def test_spark_s_kubernetes_pods_run_the_image_s_driver_and_executor_roles():
    """What Spark's Kubernetes scheduler runs in this image: `driver ARGS` (spark-submit in client mode, bound to
    the pod's address) and `executor` (its settings from the environment, a clear error without them)."""
    r = podman("run", "--rm", "--no-healthcheck", "-e", "SPARK_DRIVER_BIND_ADDRESS=127.0.0.1", IMAGE,
               "driver", "--version")
    assert r.returncode == 0 and "version 4.2.0" in r.stdout + r.stderr, r.stdout + r.stderr
    r = podman("run", "--rm", "--no-healthcheck", IMAGE, "executor")
    assert r.returncode == 1 and "SPARK_DRIVER_URL" in r.stderr and "not set" in r.stderr, r.stderr


def test_the_code_location_loads_the_platform_s_definitions_in_the_image():
    """The `code` role: Dagster's gRPC code server over `definitions` as installed in the image (the wheel's
    modules, specs and contracts), healthy by Dagster's own check."""
    port = free_port()
    name = f"mlp-test-code-{port}"
    try:
        r = podman("run", "-d", "--rm", "--no-healthcheck", "--network", "host", "--name", name,
                   "-e", "ML_PLATFORM_BIND=127.0.0.1", "-e", f"ML_PLATFORM_CODE_PORT={port}",
                   "-e", "ML_PLATFORM_DATA=/var/lib/ml-platform/data", IMAGE, "code")
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 240
        while (check := podman("exec", name, "ml-platform-role", "health")).returncode != 0:
            if time.monotonic() > deadline or podman("container", "exists", name).returncode:
                logs = podman("logs", name)
                pytest.fail(f"the code server never got healthy: {check.stdout}\n{(logs.stdout + logs.stderr)[-3000:]}")
            time.sleep(2)
        assert check.stdout.startswith("code: healthy"), check.stdout
    finally:
        podman("rm", "-f", "-t", "5", name)
