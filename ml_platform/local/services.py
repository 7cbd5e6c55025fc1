"""The services of `make run`, in start order, each with its command, its port and how to tell it is healthy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ml_platform.local.prepare import (
    MLFLOW_SERVER_ENV,
    api_key_file,
    api_key_hash,
    dagster_home,
    dynalite_command,
    prepare_kafka,
)
from ml_platform.local.procs import LOOPBACK, port_taken
from ml_platform.local.restarts import RestartPolicy
from ml_platform.local.simulate import GENERATORS
from ml_platform.metadata_stores import mlflow_server_store
from ml_platform.serve.messages import topic


@dataclass
class Service:
    name: str
    cmd: list[str]
    port: int | None
    url: str
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    # leave what a dead instance started running: the dagster-daemon's code server finishes the runs in flight
    # and then exits on its own (no heartbeat from its daemon for 20 s)
    keep_orphans: bool = False


def http_ok(url: str, contains: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and (contains is None or contains in r.read().decode("utf-8", "replace"))
    except OSError:
        return False


def kafka_ok(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def dagster_daemon_ok(port: int) -> bool:
    query = '{"query": "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"}'
    req = urllib.request.Request(f"http://{LOOPBACK}:{port}/graphql", data=query.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            statuses = json.load(r)["data"]["instance"]["daemonHealth"]["allDaemonStatuses"]
    except (OSError, KeyError, TypeError, ValueError):
        return False
    wanted = {s["daemonType"]: s["healthy"] for s in statuses if s["required"]}
    return bool(wanted) and wanted.get("SENSOR") is True and all(wanted.values())


@dataclass
class StackConfig:
    home: Path
    repo: Path
    jars: Path
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    mlflow_port: int = 5000
    dagster_port: int = 3000
    api_port: int = 8000
    store_port: int = 8001
    # the first dataset's scorer; the next ones count up. The scorer's own variable, so a test or a second stack
    # can move it even where the CLI has no flag for it
    scorer_metrics_port: int = field(
        default_factory=lambda: int(os.environ.get("ML_PLATFORM_SCORER_METRICS_PORT") or 8010))
    datasets: tuple[str, ...] = ("used_cars",)
    specs: Path | None = None  # where the chosen datasets' specs are (None: the shipped examples)
    every: float = 90.0
    rows_per_batch: int = 5000
    sensor_interval: int = 15
    startup_timeout: float = 180.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)

    def ports(self) -> dict[str, int]:
        """Every port the stack listens on, by what listens there."""
        return {"Kafka broker": self.kafka_port, "Kafka controller": self.kafka_controller_port,
                "MLflow": self.mlflow_port, "Dagster webserver": self.dagster_port, "REST API": self.api_port,
                "prediction store": self.store_port,
                **{f"scorer metrics ({ds})": self.scorer_metrics_port + i for i, ds in enumerate(self.datasets)}}


def build_services(cfg: StackConfig) -> list[Service]:
    bin_dir = Path(sys.executable).parent
    home = cfg.home.resolve()
    data = home / "data"
    bootstrap = f"{LOOPBACK}:{cfg.kafka_port}"
    mlflow_uri = f"http://{LOOPBACK}:{cfg.mlflow_port}"
    store_url = f"http://{LOOPBACK}:{cfg.store_port}"
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow_args, mlflow_env, mlflow_where = mlflow_server_store(home)  # SQLite and a folder, or PostgreSQL and S3
    specs_dir = home / "specs"  # prepared by Stack.start (prepare_specs)
    platform_env = {"ML_PLATFORM_HOME": str(home), "ML_PLATFORM_DATA": str(data), "ML_PLATFORM_JARS": str(cfg.jars),
                    "ML_PLATFORM_SENSOR_INTERVAL": str(cfg.sensor_interval), "MLFLOW_TRACKING_URI": mlflow_uri,
                    "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DAGSTER_HOME": str(dagster_home(home)),
                    "SPARK_LOCAL_IP": LOOPBACK, "ML_PLATFORM_SPECS": str(specs_dir), "ML_PLATFORM_DATASETS": "",
                    "ML_PLATFORM_STORE_ENDPOINT": store_url, "ML_PLATFORM_DAGSTER_URL":
                    f"http://{LOOPBACK}:{cfg.dagster_port}"}
    services = [
        Service("kafka", prepare_kafka(home, cfg.jars, cfg.kafka_port, cfg.kafka_controller_port), cfg.kafka_port,
                f"kafka://{bootstrap}", lambda: kafka_ok(bootstrap)),
        Service("mlflow", [str(bin_dir / "mlflow"), "server", "--host", LOOPBACK, "--port", str(cfg.mlflow_port),
                           "--workers", "1", *mlflow_args],
                cfg.mlflow_port, f"{mlflow_uri} ({mlflow_where})", lambda: http_ok(f"{mlflow_uri}/health"),
                MLFLOW_SERVER_ENV | mlflow_env),
        Service("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-h", LOOPBACK, "-p", str(cfg.dagster_port),
                                      "-w", str(cfg.repo / "workspace.yaml")],
                cfg.dagster_port, f"http://{LOOPBACK}:{cfg.dagster_port}",
                lambda: http_ok(f"http://{LOOPBACK}:{cfg.dagster_port}/server_info"), platform_env),
        Service("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(cfg.repo / "workspace.yaml")],
                None, "(sensors, automation, run queue)", lambda: dagster_daemon_ok(cfg.dagster_port), platform_env,
                keep_orphans=True),
        Service("prediction-store", dynalite_command(cfg.repo, home / "store", cfg.store_port), cfg.store_port,
                f"{store_url} (DynamoDB API, table ml_platform_predictions)", lambda: port_taken(cfg.store_port)),
        Service("api", [sys.executable, "-m", "api", "--host", LOOPBACK, "--port", str(cfg.api_port)],
                cfg.api_port, f"http://{LOOPBACK}:{cfg.api_port}/docs (key: {api_key_file(home)})",
                lambda: http_ok(f"http://{LOOPBACK}:{cfg.api_port}/health"),
                platform_env | {"ML_PLATFORM_API_KEY_HASHES": api_key_hash(home)}),
    ]
    for ds in cfg.datasets:
        services.append(_store_writer(ds, home, platform_env))
        if ds not in GENERATORS:  # a user's dataset: its batches are dropped into landing/ by hand, no simulator
            services.append(_scorer(ds, home, cfg, platform_env))
            continue
        services.append(Service(
            f"simulator-{ds}",
            [str(bin_dir / "ml-platform"), "simulate", ds, "--landing", str(data / "landing" / ds),
             "--test-dir", str(data / "test_stream" / ds), "--batches", "100000", "--every", str(cfg.every),
             "--rows-per-batch", str(cfg.rows_per_batch), "--quiet"],
            None, f"a batch every {cfg.every:g}s into {data / 'landing' / ds}", lambda: True, platform_env))
        services.append(_scorer(ds, home, cfg, platform_env))
        services.append(Service(
            f"producer-{ds}",
            [str(bin_dir / "ml-platform"), "produce", ds, "--wait-for-champion", "--loop", "--rate", "20",
             "--actual-delay", "20"],
            None, f"20 requests/s into {topic(ds, 'requests')} once a champion exists; watch: ml-platform tail {ds}",
            lambda: True, platform_env))
    return services


def _store_writer(ds: str, home: Path, env: dict[str, str]) -> Service:
    status = home / f"store-writer-{ds}.json"
    return Service(f"store-writer-{ds}", [sys.executable, "-m", "ml_platform.serve.store_writer", ds,
                                          "--status", str(status)], None,
                   f"{topic(ds, 'predictions')} + {topic(ds, 'shadow')} + {topic(ds, 'actuals')} -> the prediction "
                   f"store (status: {status})", lambda: True, env)


def _scorer(ds: str, home: Path, cfg: StackConfig, env: dict[str, str]) -> Service:
    status = home / f"scorer-{ds}.json"
    port = cfg.scorer_metrics_port + cfg.datasets.index(ds)  # one port per dataset's scorer
    return Service(
        f"scorer-{ds}",
        [sys.executable, "-m", "spark_streaming.scorer", ds, "--state", str(home), "--jars", str(cfg.jars),
         "--trigger-ms", "1000", "--metrics-port", str(port)],
        port, f"{topic(ds, 'requests')} -> {topic(ds, 'predictions')} / {topic(ds, 'dlq')}, live metrics -> "
              f"{topic(ds, 'metrics')} (status: {status}; Prometheus: http://{LOOPBACK}:{port}/metrics)",
        lambda: status.exists(), env)
