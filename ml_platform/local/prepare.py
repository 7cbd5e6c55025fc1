"""What `make run`'s services need on disk before they start: the Kafka broker's config and storage, the Dagster
instance, the prediction store's folder, the API key. All of it under the state folder, so a second run resumes."""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from pathlib import Path

from ml_platform.local.procs import LOOPBACK
from ml_platform.metadata_stores import dagster_storage_yaml
from ml_platform.serve.messages import MAX_MESSAGE_BYTES


class StackError(RuntimeError):
    pass


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
    catches runs stuck starting or being cancelled; polling every 5 s makes that, and the retry, quick.

    Storage: SQLite files in this folder, or PostgreSQL when ML_PLATFORM_DAGSTER_POSTGRES_URL is set
    (ml_platform.metadata_stores; the file names the variable, never the URL)."""
    d = home / "dagster_home"
    d.mkdir(parents=True, exist_ok=True)
    (d / "dagster.yaml").write_text(instance_yaml())
    return d


def instance_yaml() -> str:
    """dagster.yaml of `make run` and of the containers (dagster_home)."""
    return (
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "  config:\n    max_concurrent_runs: 2\n"
        "run_monitoring:\n  enabled: true\n  start_timeout_seconds: 300\n  cancel_timeout_seconds: 120\n"
        "  poll_interval_seconds: 5\n  max_resume_run_attempts: 0\n"
        "run_retries:\n  enabled: true\n  max_retries: 1\n  retry_on_asset_or_op_failure: false\n"
        "telemetry:\n  enabled: false\n" + dagster_storage_yaml())


# MLflow 3's server also starts a job runner with eight huey worker processes (~250 MB each) for its GenAI jobs;
# nothing here uses them, and on 2 cores they slow the server's own start to minutes
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def dynalite_command(repo: Path, data: Path, port: int) -> list[str]:
    """The DynamoDB-API server of `make run` and the tests (npm's dynalite on LevelDB: DynamoDB Local's licence
    is not an open-source one). `make setup-run` installs it under node/dynalite."""
    cli = repo / "node" / "dynalite" / "node_modules" / "dynalite" / "cli.js"
    if not cli.exists():
        raise StackError(f"{cli} is missing: run `make setup-run` (npm ci in node/dynalite)")
    data.mkdir(parents=True, exist_ok=True)
    return ["node", str(cli), "--host", LOOPBACK, "--port", str(port), "--path", str(data)]


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


def prepare_specs(home: Path, source: Path | None, datasets: tuple[str, ...]) -> tuple[Path, tuple[str, ...]]:
    """`make run`'s spec directory, <home>/specs: a link to each chosen dataset's spec in `source` (the user's
    ML_PLATFORM_SPECS, or the shipped examples), renewed at every start, beside the specs the web app wrote there
    (real files, kept). Dagster and the API read this one folder, so a dataset created in the web app is in both.
    Returns the folder and every dataset it holds: the chosen ones, then those created in the web app."""
    from ml_platform.spec import SpecError, load_spec, shipped_spec_dir

    folder = home.resolve() / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_symlink():
            p.unlink()
    created = {}
    for p in sorted(folder.glob("*.yaml")):
        try:
            created[load_spec(p).name] = p
        except SpecError:
            continue  # it shows in Dagster as a spec error; no service is started for it
    src = (source or shipped_spec_dir()).resolve()
    for p in sorted(list(src.glob("*.yaml")) + list(src.glob("*.yml"))):
        try:
            name = load_spec(p).name
        except SpecError:
            continue
        if name in datasets and name not in created:
            (folder / f"{name}{p.suffix}").symlink_to(p)
    return folder, tuple(datasets) + tuple(n for n in created if n not in datasets)
