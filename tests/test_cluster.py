"""The standalone-cluster backend for real: a Spark master and worker on loopback run a cleaning materialization."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

from ml_platform.local.supervisor import stop_pid

pytestmark = pytest.mark.cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    logs = tmp_path_factory.mktemp("spark-cluster")
    env = os.environ | {"SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(logs),
                        "PYSPARK_PYTHON": sys.executable, "SPARK_WORKER_DIR": str(logs / "work")}
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    spark_class = str(spark_home / "bin" / "spark-class")
    procs = [subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env,
                              stdout=open(logs / "master.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _master_state(ui)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Spark master did not start:\n" + (logs / "master.log").read_text()) from None
                time.sleep(1)
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
             "--memory", "2g", "--webui-port", str(worker_ui), f"spark://127.0.0.1:{port}"], env=env,
            stdout=open(logs / "worker.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        while _master_state(ui).get("aliveworkers", 0) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("Spark worker did not register:\n" + (logs / "worker.log").read_text())
            time.sleep(1)
        yield f"spark://127.0.0.1:{port}", logs / "work"
    finally:
        for p in reversed(procs):
            stop_pid(p.pid, grace=10)


def test_cleaning_materializes_on_a_standalone_cluster(standalone, tmp_path):
    from dagster import DagsterInstance

    from ml_platform.local.simulate import SimConfig, write_batch

    master_url, work_dir = standalone
    home = tmp_path / "dagster_home"
    home.mkdir()
    path = write_batch(SimConfig("used_cars", rows_per_batch=200), 1, tmp_path / "data/landing/used_cars", None)
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("used_cars_batches", [path.stem])
    env = os.environ | {"DAGSTER_HOME": str(home), "ML_PLATFORM_ENV": "cluster", "SPARK_MASTER_URL": master_url,
                        "ML_PLATFORM_DATA": str(tmp_path / "data"), "ML_PLATFORM_SHUFFLE_PARTITIONS": "2"}
    r = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "definitions", "--select",
                        "used_cars/raw_batches,used_cars/cleaned_features", "--partition", path.stem],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / f"data/silver/used_cars/batch={path.stem}").glob("*.parquet"))
    # the worker keeps a folder per application whose executors it ran: proof the work left the driver
    assert list(work_dir.glob("app-*")), f"no application ran on the worker ({work_dir})"
