"""Shared fixtures: one Spark session for the whole run, tiny simulated data, a throwaway store."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The fast set (`make test-fast`, `-m fast`) is derived, not hand-kept: a test that uses one of these fixtures
# (directly or through another fixture) starts a service, so it is marked `service`; the rest are `fast` unless
# marked `slow` by hand (a JVM in a subprocess, a wheel build). In a fast run a service fixture that is still
# reached (request.getfixturevalue) fails the test, and so does a fast test that runs too long.
SERVICE_FIXTURES = {"local_stack", "spark", "kafka", "minio", "s3_spark", "hdfs", "mlflow_server", "dynalite",
                    "dagster", "browser", "postgres"}
# parameters that choose a server at run time through request.getfixturevalue (test_stores' any_store)
SERVICE_PARAMS = {"s3", "hdfs"}
FAST_TEST_SECONDS = 60
_running: list = []  # the test being set up, for the service fixtures' fast-run check


# Session fixtures that keep working while idle: the `make run` stack (Dagster daemon ticks, streaming queries, the
# API's readers: 0.24 of a core, measured with nothing else running) and Chromium on a page that polls. The tests
# that use them run last, together, so nothing else runs beside them (CI timed out when the stack ran beside 40
# test files).
BUSY_WHEN_IDLE = ("local_stack", "browser")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: any(f in getattr(item, "fixturenames", ()) for f in BUSY_WHEN_IDLE))  # stable
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
                or SERVICE_PARAMS.intersection(v for v in params.values() if isinstance(v, str))
                or item.get_closest_marker("cluster") or item.get_closest_marker("deploy")):
            item.add_marker(pytest.mark.service)
        elif not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.fast)


def _fast_run(config) -> bool:
    expr = config.getoption("markexpr", "") or ""
    return "fast" in expr and "not fast" not in expr


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _running[:] = [item]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (call.when == "call" and report.passed and _fast_run(item.config) and item.get_closest_marker("fast")
            and call.duration > FAST_TEST_SECONDS):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is in the fast set but took {call.duration:.0f} s (limit "
                           f"{FAST_TEST_SECONDS} s): mark it @pytest.mark.slow, or give it the service fixture it uses")


def _no_service_in_fast_run(request, name: str) -> None:
    item = _running[0] if _running else None
    if item is not None and _fast_run(request.config) and item.get_closest_marker("fast"):
        pytest.fail(f"{item.nodeid} is in the fast set but starts {name}: take the `{name}` fixture as an argument "
                    f"(so it is marked `service`) or mark the test @pytest.mark.slow", pytrace=False)


@pytest.fixture(scope="session")
def spark(request):
    _no_service_in_fast_run(request, "spark")
    from ml_platform.spark import local_session

    # hadoop-aws too, for the S3 tests (s3a settings are set on the running session by the fixture that needs them)
    session = local_session("ml-platform-tests", jars_dir=ROOT / ".jars", jar_groups=("spark", "aws"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def specs():
    from ml_platform.spec import builtin_specs

    return builtin_specs()


@pytest.fixture
def store(tmp_path):
    from ml_platform.stores import LocalStore

    return LocalStore(tmp_path / "data")


@pytest.fixture
def landing(store):
    """Write a file into the used_cars landing zone."""

    def put(name: str, content: bytes | str) -> Path:
        d = store.path("landing/used_cars")
        d.mkdir(parents=True, exist_ok=True)
        p = d / name
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    return put


@pytest.fixture(scope="session")
def used_cars_csv(tmp_path_factory) -> str:
    """A tiny simulated used_cars batch, with broken rows, as text."""
    from ml_platform.local.simulate import SimConfig, write_batch

    d = tmp_path_factory.mktemp("sim")
    path = write_batch(SimConfig("used_cars", rows_per_batch=400, broken_share=0.02), 1, d, None)
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session", autouse=True)
def _quiet_dagster_home(tmp_path_factory):
    os.environ.setdefault("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A real Kafka broker (KRaft, from the Maven jars) on free loopback ports; restartable on the same ports and
    data, for the fault tests."""

    def __init__(self, home: Path):
        from ml_platform.local.supervisor import prepare_kafka

        self.port, self.controller = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.cmd = prepare_kafka(home, ROOT / ".jars", self.port, self.controller)
        self.log = home / "kafka.log"
        self.proc = None

    def start(self) -> None:
        import subprocess
        import time

        from ml_platform.local.supervisor import kafka_ok

        self.proc = subprocess.Popen(self.cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 90
        while not kafka_ok(self.bootstrap):
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "Kafka broker did not start in 90 s"
            time.sleep(0.5)

    def stop(self) -> None:
        from ml_platform.local.supervisor import stop_pid

        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None


@pytest.fixture(scope="session")
def kafka(request, tmp_path_factory):
    _no_service_in_fast_run(request, "kafka")
    broker = Broker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mlflow_server(request, tmp_path_factory):
    from services import MlflowServer

    _no_service_in_fast_run(request, "mlflow_server")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(request):
    """A real PostgreSQL server with the production stores' databases, `dagster` and `mlflow`."""
    from services import Postgres

    _no_service_in_fast_run(request, "postgres")
    server = Postgres(databases=("dagster", "mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def minio(request, tmp_path_factory):
    """A real S3-compatible server with a bucket `platform`; the session's AWS_* variables point at it (the
    platform reads credentials only from the environment)."""
    _no_service_in_fast_run(request, "minio")
    from services import Minio

    server = Minio(tmp_path_factory.mktemp("minio"))
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    server.client().create_bucket(Bucket="platform")
    yield server
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="session")
def s3_spark(spark, minio):
    """The session's Spark, with s3a pointed at MinIO."""
    from ml_platform.spark import s3a_conf

    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for k, v in s3a_conf(minio.endpoint).items():
        conf.set(k.removeprefix("spark.hadoop."), v)
    # this JVM started before MinIO's AWS_* variables were set, so s3a's environment provider cannot see them;
    # the product never does this (its Spark starts in a process that has them), the tests use throwaway keys
    conf.set("fs.s3a.access.key", minio.access_key)
    conf.set("fs.s3a.secret.key", minio.secret_key)
    return spark


@pytest.fixture(scope="session")
def browser(request, tmp_path_factory):
    """One headless Chromium (selenium) for the session; its downloads land in `browser.download_dir`."""
    _no_service_in_fast_run(request, "browser")
    from browser import start_chromium

    driver = start_chromium(download_dir=tmp_path_factory.mktemp("downloads"))
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def local_stack(request, tmp_path_factory):
    """The real `ml-platform up` (tests/local_stack.py), once per session; tests/test_up.py stops it last."""
    _no_service_in_fast_run(request, "local_stack")
    from local_stack import Up, all_running

    from ml_platform.local.procs import stop_pid

    stack = Up(tmp_path_factory.mktemp("up"))
    try:
        stack.wait(all_running, 600, "every service running")  # ~2 min on an idle 2-core machine
        yield stack
    finally:
        if stack.proc.poll() is None:
            stop_pid(stack.proc.pid, grace=60)


@pytest.fixture(scope="session")
def hdfs(request, tmp_path_factory):
    _no_service_in_fast_run(request, "hdfs")
    from services import MiniHdfs

    cluster = MiniHdfs(tmp_path_factory.mktemp("hdfs"))
    yield cluster
    cluster.stop()
