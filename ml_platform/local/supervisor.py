"""`make run`: the single-machine version of the production stack, started and stopped as one command.

Kafka (KRaft, from the Maven jars), an MLflow tracking server, the Dagster webserver and daemon, and the
simulator. All state lives under one folder (ML_PLATFORM_HOME, default .local/), so a second run resumes.
Services are started in their own process groups and stopped by pid, children included.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ml_platform.local.simulate import GENERATORS
from ml_platform.serve.messages import MAX_MESSAGE_BYTES, topic

LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    cmd: list[str]
    port: int | None
    url: str
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(wanted: dict[str, int], pid_dir: Path) -> None:
    """Fail before starting anything if a port is taken, saying by whom when it is our own leftover."""
    taken = [f"port {port} ({what}) is already in use on {LOOPBACK}" for what, port in wanted.items()
             if not port_free(port)]
    if not taken:
        return
    leftovers = [p.stem for p in pid_dir.glob("*.pid") if _alive(_read_pid(p))] if pid_dir.exists() else []
    if leftovers:
        hint = f"an earlier `make run` still has {sorted(leftovers)} running: stop it with `ml-platform down`"
    else:
        hint = "stop whatever holds it, or choose other ports (`ml-platform up --help`)"
    raise StackError("\n".join(taken + [hint]))


def _read_pid(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    """Running (a zombie, exited but not yet reaped, is not)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def descendants(pid: int) -> list[int]:
    """All live descendants of pid, from /proc (children that started their own sessions included)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def stop_pid(pid: int, grace: float = 15.0) -> None:
    """SIGTERM a process and every descendant, then SIGKILL whatever is left after `grace` seconds."""
    tree = [pid] + descendants(pid)
    for p in tree:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        _reap(pid)
        time.sleep(0.2)
    for p in tree + descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pid)


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


def kafka_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners=PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        f"advertised.listeners=PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"controller.quorum.voters=1@{LOOPBACK}:{controller_port}",
        f"log.dirs={data_dir}",
        "num.partitions=2",
        "offsets.topic.replication.factor=1",
        # one broker: 50 partitions of __consumer_offsets only make a fresh broker's first consumer group wait
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        f"message.max.bytes={MAX_MESSAGE_BYTES}",  # the contract's limit: a request may be up to 4 MB
    ]) + "\n"


KAFKA_LOG4J = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
# the per-request log and the clients' config dumps repeat on every connection: warnings only
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
logger.config.name = org.apache.kafka.common.config
logger.config.level = warn
"""


def prepare_kafka(home: Path, jars: Path, port: int, controller_port: int) -> list[str]:
    """Write the broker config and format its storage once (KRaft); return the broker command."""
    if not any((jars / "kafka").glob("kafka_2.13-*.jar")):
        raise StackError(f"no Kafka broker jars in {jars / 'kafka'}: run `make jars-kafka` (or `make setup-run`)")
    kdir = home / "kafka"
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(kafka_properties(kdir / "data", port, controller_port))
    log4j = kdir / "log4j2.properties"
    log4j.write_text(KAFKA_LOG4J)
    # without a log4j2 configuration the broker falls back to log4j's default (errors only), so its log stayed
    # empty; this one writes to stdout, which the supervisor (and the tests' broker) send to kafka.log
    java = [os.environ.get("JAVA", "java"), "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", str(jars / "kafka" / "*")]
    if not (kdir / "data" / "meta.properties").exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the tool's argument parser would take a leading '-' for an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = subprocess.run(java + ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                             capture_output=True, text=True)
        if fmt.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout}\n{fmt.stderr}")
    return java + ["kafka.Kafka", str(props)]


def dagster_home(home: Path) -> Path:
    """DAGSTER_HOME with a queued run coordinator (at most two Spark runs at once on a 2-core machine), run
    monitoring and one automatic retry of a run whose worker crashed. On Ctrl-C, running runs get SIGTERM and are
    marked failed (interrupted); queued runs stay queued and resume at the next `make run`.

    A killed run worker is noticed by the code server that launched it (every 0.5 s) and its run marked failed;
    the run retries daemon then re-executes it once. retry_on_asset_or_op_failure is off: a step that failed (a
    batch the data checks refused) fails the same way again, so only crashes are retried. The default run
    launcher cannot check a started run's worker itself (no check_run_worker_health), so run monitoring here
    catches runs stuck starting or being cancelled; polling every 5 s makes that, and the retry, quick."""
    d = home / "dagster_home"
    d.mkdir(parents=True, exist_ok=True)
    (d / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "  config:\n    max_concurrent_runs: 2\n"
        "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 300\n  cancel_timeout_seconds: 120\n"
        "  poll_interval_seconds: 5\n  max_resume_run_attempts: 0\n"
        "run_retries:\n  enabled: true\n  max_retries: 1\n  retry_on_asset_or_op_failure: false\n"
        "telemetry:\n  enabled: false\n")
    return d


# MLflow 3's server also starts a job runner with eight huey worker processes (~250 MB each) for its GenAI jobs;
# nothing here uses them, and on 2 cores they slow the server's own start to minutes
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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
    scorer_metrics_port: int = 8010  # the first dataset's scorer; the next ones count up
    datasets: tuple[str, ...] = ("used_cars",)
    every: float = 90.0
    rows_per_batch: int = 5000
    sensor_interval: int = 15
    startup_timeout: float = 180.0


def build_services(cfg: StackConfig) -> list[Service]:
    bin_dir = Path(sys.executable).parent
    home = cfg.home.resolve()
    data = home / "data"
    bootstrap = f"{LOOPBACK}:{cfg.kafka_port}"
    mlflow_uri = f"http://{LOOPBACK}:{cfg.mlflow_port}"
    store_url = f"http://{LOOPBACK}:{cfg.store_port}"
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    platform_env = {"ML_PLATFORM_HOME": str(home), "ML_PLATFORM_DATA": str(data), "ML_PLATFORM_JARS": str(cfg.jars),
                    "ML_PLATFORM_SENSOR_INTERVAL": str(cfg.sensor_interval), "MLFLOW_TRACKING_URI": mlflow_uri,
                    "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DAGSTER_HOME": str(dagster_home(home)),
                    "SPARK_LOCAL_IP": LOOPBACK, "ML_PLATFORM_DATASETS": ",".join(cfg.datasets),
                    "ML_PLATFORM_STORE_ENDPOINT": store_url, "ML_PLATFORM_DAGSTER_URL":
                    f"http://{LOOPBACK}:{cfg.dagster_port}"}
    services = [
        Service("kafka", prepare_kafka(home, cfg.jars, cfg.kafka_port, cfg.kafka_controller_port), cfg.kafka_port,
                f"kafka://{bootstrap}", lambda: kafka_ok(bootstrap)),
        Service("mlflow", [str(bin_dir / "mlflow"), "server", "--host", LOOPBACK, "--port", str(cfg.mlflow_port),
                           "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                           "--artifacts-destination", str(home / "mlflow" / "artifacts")],
                cfg.mlflow_port, mlflow_uri, lambda: http_ok(f"{mlflow_uri}/health"), MLFLOW_SERVER_ENV),
        Service("dagster-webserver", [str(bin_dir / "dagster-webserver"), "-h", LOOPBACK, "-p", str(cfg.dagster_port),
                                      "-w", str(cfg.repo / "workspace.yaml")],
                cfg.dagster_port, f"http://{LOOPBACK}:{cfg.dagster_port}",
                lambda: http_ok(f"http://{LOOPBACK}:{cfg.dagster_port}/server_info"), platform_env),
        Service("dagster-daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", str(cfg.repo / "workspace.yaml")],
                None, "(sensors, automation, run queue)", lambda: dagster_daemon_ok(cfg.dagster_port), platform_env),
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


def dynalite_command(repo: Path, data: Path, port: int) -> list[str]:
    """The DynamoDB-API server of `make run` and the tests (npm's dynalite on LevelDB: DynamoDB Local's licence
    is not an open-source one). `make setup-run` installs it under node/dynalite."""
    cli = repo / "node" / "dynalite" / "node_modules" / "dynalite" / "cli.js"
    if not cli.exists():
        raise StackError(f"{cli} is missing: run `make setup-run` (npm ci in node/dynalite)")
    data.mkdir(parents=True, exist_ok=True)
    return ["node", str(cli), "--host", LOOPBACK, "--port", str(port), "--path", str(data)]


def port_taken(port: int) -> bool:
    return not port_free(port)


def api_key_file(home: Path) -> Path:
    return home.resolve() / "api-key"


def api_key_hash(home: Path) -> str:
    """`make run`'s API key: ML_PLATFORM_API_KEYS when set; otherwise one made for this state folder and kept in
    <home>/api-key (mode 600), so curl can read it and it is never printed. The API gets only its hash."""
    import hashlib
    import secrets

    given = [k.strip() for k in os.environ.get("ML_PLATFORM_API_KEYS", "").split(",") if k.strip()]
    f = api_key_file(home)
    if not given:
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch(mode=0o600)
            f.write_text(secrets.token_urlsafe(24))
        given = [f.read_text().strip()]
    return ",".join(hashlib.sha256(k.encode()).hexdigest() for k in given)


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


class Stack:
    def __init__(self, cfg: StackConfig, out=sys.stdout):
        self.cfg, self.out = cfg, out
        self.pid_dir = cfg.home / "pids"
        self.log_dir = cfg.home / "logs"
        self.running: list[Service] = []

    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def start(self) -> None:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        check_ports({"Kafka broker": self.cfg.kafka_port, "Kafka controller": self.cfg.kafka_controller_port,
                     "MLflow": self.cfg.mlflow_port, "Dagster webserver": self.cfg.dagster_port,
                     "REST API": self.cfg.api_port, "prediction store": self.cfg.store_port}, self.pid_dir)
        (self.pid_dir / "supervisor.pid").write_text(str(os.getpid()))
        for svc in build_services(self.cfg):
            self._launch(svc)
            self._wait_healthy(svc)
        self.say(self.table())

    def _launch(self, svc: Service) -> None:
        log = open(self.log_dir / f"{svc.name}.log", "ab")
        self.say(f"starting {svc.name} (log: {self.log_dir / (svc.name + '.log')})")
        svc.proc = subprocess.Popen(svc.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=os.environ | svc.env, cwd=self.cfg.repo, start_new_session=True)
        (self.pid_dir / f"{svc.name}.pid").write_text(str(svc.proc.pid))
        self.running.append(svc)

    def _wait_healthy(self, svc: Service) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise StackError(f"{svc.name} exited with code {svc.proc.returncode} while starting:\n"
                                 + self.tail(svc.name))
            if svc.healthy():
                self.say(f"  {svc.name} is healthy")
                return
            time.sleep(1.0)
        raise StackError(f"{svc.name} was not healthy after {self.cfg.startup_timeout:.0f}s:\n" + self.tail(svc.name))

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def table(self) -> str:
        rows = [f"  {s.name:<22} {s.url}" for s in self.running]
        return "\n".join(["", "ml-platform stack is up:", *rows,
                          f"  state folder           {self.cfg.home.resolve()}", "Ctrl-C stops everything.", ""])

    def watch(self) -> int:
        """Block until Ctrl-C or a service dies; returns the exit code."""
        while True:
            for svc in self.running:
                if svc.proc.poll() is not None:
                    self.say(f"{svc.name} exited unexpectedly (code {svc.proc.returncode}):\n{self.tail(svc.name)}")
                    return 1
            time.sleep(1.0)

    def stop(self) -> None:
        for svc in reversed(self.running):
            self.say(f"stopping {svc.name} (pid {svc.proc.pid})")
            stop_pid(svc.proc.pid)
            (self.pid_dir / f"{svc.name}.pid").unlink(missing_ok=True)
        self.running.clear()
        (self.pid_dir / "supervisor.pid").unlink(missing_ok=True)


def down(home: Path, out=sys.stdout) -> int:
    """Stop whatever an earlier, interrupted `make run` left behind, by the pids it recorded."""
    stopped = 0
    pid_files = sorted((home / "pids").glob("*.pid"), key=lambda p: p.stem != "supervisor")  # supervisor first
    for p in pid_files:
        pid = _read_pid(p)
        if _alive(pid):
            print(f"stopping {p.stem} (pid {pid})", file=out)
            stop_pid(pid)
            stopped += 1
        p.unlink(missing_ok=True)
    print(f"stopped {stopped} service(s)", file=out)
    return 0


def up(cfg: StackConfig) -> int:
    stack = Stack(cfg)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        return stack.watch()
    except StackError as e:
        stack.say(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        stack.say("\ninterrupted")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C or kill must not abandon the clean-up
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
