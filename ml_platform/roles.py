"""`ml-platform-role ROLE`: the container image's entry point, one role per container (README, "Deploy").

  webserver | daemon | code       Dagster: the UI, the daemon (sensors, automation, run queue), the code location
  mlflow                         the MLflow tracking server and registry
  api                            the REST API and web app
  scorer DATASET                 the Kafka scorer of one dataset (Spark: local, or SPARK_MASTER_URL)
  store-writer DATASET           predictions, shadow predictions and actuals into the prediction store
  health [ROLE]                  the container's health check (exit 0 healthy, 1 not); ROLE defaults to the
                                 role this container was started with
  dagster ...                    Dagster's own CLI, unchanged: what Dagster's Helm chart runs in this image (the
                                 code location's `dagster api grpc`, each run's `dagster api execute_run`)
  driver ... | executor          what Spark's Kubernetes scheduler runs in this image: the driver pod of
                                 `spark-submit --deploy-mode cluster`, and each executor pod

Each role prepares what it needs from the environment, then replaces itself with the real program (exec), so
signals reach that program directly. The stores come from ml_platform.metadata_stores (PostgreSQL, S3) and the
data root from ML_PLATFORM_DATA, as everywhere else; secrets only ever arrive through the environment.

  DAGSTER_HOME              where dagster.yaml is written (the image sets /var/lib/ml-platform/dagster)
  ML_PLATFORM_CODE_SERVER   host:port of the code location's gRPC server (the `code` role); unset: the webserver
                            and daemon load `definitions` in-process, as `make run` does
  ML_PLATFORM_BIND          the address servers listen on (default 0.0.0.0: inside a container)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

ROLE_FILE = Path(os.environ.get("ML_PLATFORM_ROLE_FILE", "/tmp/ml-platform-role"))
PORTS = {"webserver": 3000, "code": 4000, "mlflow": 5000, "api": 8000, "scorer": 8010}
SERVERS = ("webserver", "daemon", "code", "mlflow", "api")
PER_DATASET = ("scorer", "store-writer")
ROLES = SERVERS + PER_DATASET


def tool(name: str) -> str:
    """A console script of this environment (the image's venv, or the one running this)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def bind() -> str:
    return os.environ.get("ML_PLATFORM_BIND", "0.0.0.0")


def port(role: str) -> int:
    return int(os.environ.get(f"ML_PLATFORM_{role.upper().replace('-', '_')}_PORT", PORTS[role]))


def dagster_instance() -> Path:
    """DAGSTER_HOME with make run's dagster.yaml (storage from the environment)."""
    from ml_platform.local.prepare import instance_yaml

    d = Path(os.environ.setdefault("DAGSTER_HOME", "/opt/dagster/home"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "dagster.yaml").write_text(instance_yaml())
    return d


def workspace() -> Path:
    """The workspace the webserver and daemon load: the code server's address, or `definitions` in-process."""
    server = os.environ.get("ML_PLATFORM_CODE_SERVER", "").strip()
    ws = Path(os.environ["DAGSTER_HOME"]) / "workspace.yaml"
    if not server:
        ws.write_text("load_from:\n  - python_module:\n      module_name: definitions\n"
                      "      location_name: ml_platform\n")
        return ws
    host, _, p = server.rpartition(":")
    if not host or not p.isdigit():
        raise SystemExit(f"ml-platform-role: ML_PLATFORM_CODE_SERVER must be host:port, not {server!r}")
    ws.write_text(f"load_from:\n  - grpc_server:\n      host: {host}\n      port: {p}\n"
                  "      location_name: ml_platform\n")
    return ws


def command(role: str, dataset: str | None) -> tuple[list[str], dict[str, str]]:
    """The program a role runs, and what it adds to the environment."""
    py, b = sys.executable, bind()
    if role in ("webserver", "daemon", "code"):
        dagster_instance()
    if role == "webserver":
        return [tool("dagster-webserver"), "-h", b, "-p", str(port(role)), "-w", str(workspace())], {}
    if role == "daemon":
        return [tool("dagster-daemon"), "run", "-w", str(workspace())], {}
    if role == "code":
        return [tool("dagster"), "api", "grpc", "-h", b, "-p", str(port(role)), "-m", "definitions"], {}
    if role == "mlflow":
        from ml_platform.local.prepare import MLFLOW_SERVER_ENV
        from ml_platform.metadata_stores import mlflow_server_store

        home = Path(os.environ.get("ML_PLATFORM_HOME", "/var/lib/ml-platform"))
        args, env, _ = mlflow_server_store(home)
        workers = os.environ.get("ML_PLATFORM_MLFLOW_WORKERS", "2")
        return [tool("mlflow"), "server", "--host", b, "--port", str(port(role)), "--workers", workers, *args], \
            MLFLOW_SERVER_ENV | env
    if role == "api":
        return [py, "-m", "api", "--host", b, "--port", str(port(role))], {}
    if role == "scorer":
        cmd = [py, "-m", "spark_streaming.scorer", dataset, "--metrics-port", str(port(role)), "--metrics-host", b]
        if os.environ.get("SPARK_MASTER_URL"):
            cmd += ["--master", os.environ["SPARK_MASTER_URL"]]
        return cmd, {}
    return [py, "-m", "ml_platform.serve.store_writer", dataset], {}


def healthy(role: str) -> tuple[bool, str]:
    """Is this container's program serving? Each role by what it offers: an HTTP page, Dagster's own checks."""
    loopback = "127.0.0.1"
    if role in ("webserver", "mlflow", "api", "scorer"):
        path = {"webserver": "/server_info", "mlflow": "/health", "api": "/health", "scorer": "/metrics"}[role]
        url = f"http://{loopback}:{port(role)}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status == 200, f"{url}: {r.status}"
        except OSError as e:
            return False, f"{url}: {e}"
    if role in ("daemon", "code"):  # what Dagster's Helm chart probes with
        cmd = ([tool("dagster-daemon"), "liveness-check"] if role == "daemon" else
               [tool("dagster"), "api", "grpc-health-check", "-p", str(port(role))])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return r.returncode == 0, (r.stdout + r.stderr).strip()[-500:]
    return True, "store-writer: running (it has no port; a crash ends the container)"


# what Spark's Kubernetes scheduler sets in an executor pod's environment, by the executor's argument it fills
EXECUTOR_ENV = {"--driver-url": "SPARK_DRIVER_URL", "--executor-id": "SPARK_EXECUTOR_ID",
                "--cores": "SPARK_EXECUTOR_CORES", "--app-id": "SPARK_APPLICATION_ID",
                "--hostname": "SPARK_EXECUTOR_POD_IP", "--resourceProfileId": "SPARK_RESOURCE_PROFILE_ID",
                "--podName": "SPARK_EXECUTOR_POD_NAME"}


def spark_on_kubernetes(kind: str, args: list[str], env=os.environ) -> tuple[list[str], dict[str, str]]:
    """The command of a Spark-on-Kubernetes pod in this image (what Spark's own image entry point does): the driver
    runs spark-submit in client mode bound to its pod's address; an executor runs Spark's Kubernetes executor
    backend with the pod's settings, the JVM options Spark passed (SPARK_JAVA_OPT_<n>, in order) and pyspark's
    jars."""
    import pyspark

    home = Path(pyspark.__file__).parent
    if kind == "driver":
        bind_to = env.get("SPARK_DRIVER_BIND_ADDRESS")
        if not bind_to:
            raise SystemExit("ml-platform-role driver: SPARK_DRIVER_BIND_ADDRESS is not set (Spark's Kubernetes "
                             "scheduler sets it in the driver pod)")
        # spark-submit decides the driver's address (its service); the session must not pin it to loopback
        return ([str(home / "bin" / "spark-submit"), "--conf", f"spark.driver.bindAddress={bind_to}",
                 "--deploy-mode", "client", *args], {"ML_PLATFORM_SPARK_DRIVER_HOST": "spark-submit",
                                                     "SPARK_HOME": str(home)})
    missing = [v for v in (*EXECUTOR_ENV.values(), "SPARK_EXECUTOR_MEMORY") if not env.get(v)]
    if missing:
        raise SystemExit(f"ml-platform-role executor: {', '.join(missing)} not set (Spark's Kubernetes scheduler "
                         "sets them in an executor pod)")
    opts = [v for k, v in sorted(((k, v) for k, v in env.items() if k.startswith("SPARK_JAVA_OPT_")),
                                 key=lambda kv: int(kv[0].rsplit("_", 1)[1]) if kv[0].rsplit("_", 1)[1].isdigit()
                                 else 0)]
    classpath = ":".join(p for p in (env.get("SPARK_CONF_DIR") or str(home / "conf"), env.get("SPARK_CLASSPATH"),
                                     f"{home / 'jars'}/*", env.get("SPARK_EXTRA_CLASSPATH"),
                                     env.get("SPARK_DIST_CLASSPATH")) if p)
    memory = env["SPARK_EXECUTOR_MEMORY"]
    cmd = ["java", *opts, f"-Xms{memory}", f"-Xmx{memory}", "-cp", classpath,
           "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"]
    for flag, var in EXECUTOR_ENV.items():
        cmd += [flag, env[var]]
    return cmd, {"SPARK_HOME": str(home)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dagster"]:  # Dagster's chart gives its commands as the container's args
        os.execv(tool("dagster"), [tool("dagster"), *argv[1:]])
    if argv[:1] in (["driver"], ["executor"]):  # Spark's Kubernetes scheduler, likewise
        if argv[0] == "executor" and argv[1:]:
            print(f"ml-platform-role executor: takes no arguments, not {argv[1:]}", file=sys.stderr)
            return 2
        cmd, env = spark_on_kubernetes(argv[0], argv[1:])
        os.execvpe(cmd[0], cmd, os.environ | env)
    ap = argparse.ArgumentParser(prog="ml-platform-role", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("role", choices=ROLES + ("health",))
    ap.add_argument("dataset", nargs="?", help="the dataset of a scorer or store-writer; the role, for health")
    a = ap.parse_args(argv)
    if a.role == "health":
        role = a.dataset or (ROLE_FILE.read_text().strip() if ROLE_FILE.exists() else "")
        if role not in ROLES:
            print(f"ml-platform-role health: no role to check (give one of {', '.join(ROLES)})", file=sys.stderr)
            return 2
        ok, detail = healthy(role)
        print(f"{role}: {'healthy' if ok else 'unhealthy'}: {detail}")
        return 0 if ok else 1
    if (a.role in PER_DATASET) != bool(a.dataset):
        ap.error(f"{a.role} takes a dataset" if a.role in PER_DATASET else f"{a.role} takes no dataset")
    from ml_platform.metadata_stores import StoreConfigError

    try:
        cmd, env = command(a.role, a.dataset)
    except StoreConfigError as e:
        print(f"ml-platform-role {a.role}: {e}", file=sys.stderr)
        return 2
    try:
        ROLE_FILE.write_text(a.role)
    except OSError:
        pass  # a read-only /tmp: `health` then needs the role named
    print(f"ml-platform-role: {a.role}{' ' + a.dataset if a.dataset else ''}: {' '.join(cmd[:2])} ...", flush=True)
    os.execvpe(cmd[0], cmd, os.environ | env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
