"""The standalone-cluster backend for real: a Spark master and two workers on loopback run a cleaning
materialization, and the Kafka scorer serves from them."""

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
    port, ui = _free_port(), _free_port()
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
        for i in (1, 2):  # two workers of one core each, each with a work folder of its own
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "2g", "--webui-port", str(_free_port()), "--work-dir", str(logs / f"work{i}"),
                 f"spark://127.0.0.1:{port}"], env=env,
                stdout=open(logs / f"worker{i}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        while _master_state(ui).get("aliveworkers", 0) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("Spark workers did not register:\n" + (logs / "worker1.log").read_text()
                                   + (logs / "worker2.log").read_text())
            time.sleep(1)
        yield f"spark://127.0.0.1:{port}", [logs / "work1", logs / "work2"]
    finally:
        for p in reversed(procs):
            stop_pid(p.pid, grace=10)


def test_cleaning_materializes_on_a_standalone_cluster(standalone, tmp_path):
    from dagster import DagsterInstance

    from ml_platform.local.simulate import SimConfig, write_batch

    master_url, work_dirs = standalone
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
    log = tmp_path / "data/silver/used_cars/rows/_delta_log"
    assert any(path.stem in p.read_text() for p in log.glob("*.json")), "the batch is not in the silver table's log"
    # a worker keeps a folder per application whose executors it ran: proof the work left the driver
    assert any(list(d.glob("app-*")) for d in work_dirs), f"no application ran on a worker ({work_dirs})"


def test_the_scorer_serves_from_the_cluster_with_work_on_both_workers(standalone, spark, specs, kafka, tmp_path):
    """The Kafka scorer with --master spark://: the same predictions, DLQ records and live metrics as in local
    mode (tests/test_serving.py), its executors on both workers, its checkpoints under --checkpoints."""
    import dataclasses
    import signal

    import yaml

    from ml_platform.local.loadgen import stream_rows
    from ml_platform.local.simulate import SimConfig, write_batch
    from ml_platform.serve.kafka_io import ensure_topics, producer, read_topic
    from ml_platform.serve.messages import request, topic
    from ml_platform.train.registry import Tracker
    from tests.test_serving import register, year_model

    master_url, work_dirs = standalone
    name = "t_cluster"
    spec = dataclasses.replace(specs["used_cars"], name=name, serving=dataclasses.replace(
        specs["used_cars"].serving, window_seconds=10, watermark_seconds=5, actual_within_seconds=120))
    (tmp_path / "specs").mkdir()
    raw = yaml.safe_load((ROOT / "ml_platform" / "specs" / "used_cars.yaml").read_text())
    raw["name"] = name
    raw["serving"] = (raw.get("serving") or {}) | {"window_seconds": 10, "watermark_seconds": 5,
                                                   "actual_within_seconds": 120}
    (tmp_path / "specs" / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    ensure_topics(kafka.bootstrap, name)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    v1 = register(spark, tracker, name, year_model(1.0))
    write_batch(SimConfig("used_cars", 400, test_share=0.5, broken_share=0.0, seed=11), 1, tmp_path / "land",
                tmp_path / "test")
    rows = [r for _, r in stream_rows(tmp_path / "test")][:150]
    state, ckpt = tmp_path / "state", tmp_path / "checkpoints-elsewhere"
    state.mkdir()
    log = open(state / "scorer.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "spark_streaming.scorer", name, "--master", master_url,
                             "--state", str(state), "--checkpoints", str(ckpt), "--specs", str(tmp_path / "specs"),
                             "--tracking-uri", uri, "--bootstrap", kafka.bootstrap, "--jars", str(ROOT / ".jars"),
                             "--max-per-trigger", "100"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = state / f"scorer-{name}.json"
        deadline = time.monotonic() + 300
        while not (status.exists() and json.loads(status.read_text() or "{}").get("state") == "serving"):
            assert proc.poll() is None and time.monotonic() < deadline, (state / "scorer.log").read_text()[-3000:]
            time.sleep(1)
        base = "2026-11-23T10:00:{:02d}.000Z"
        p = producer(kafka.bootstrap)
        for i, row in enumerate(rows):
            p.send(topic(name, "requests"), key=f"c{i}", value=json.dumps(request(spec, f"c{i}", row,
                                                                                  base.format(i % 40))).encode())
        for bad in (b"{not json", b'{"no_request_id": 1}'):
            p.send(topic(name, "requests"), key="bad", value=bad)
        for i in range(len(rows)):  # every actual: the live metrics' windows fill
            p.send(topic(name, "actuals"), key=f"c{i}", value=json.dumps(
                {"request_id": f"c{i}", "event_time": base.format(i % 40 + 2), "actual": 20000.0 + i}).encode())
        late = "2026-11-23T10:05:00.000Z"  # moves the watermark past every window above
        p.send(topic(name, "requests"), key="late", value=json.dumps(request(spec, "late", rows[0], late)).encode())
        p.send(topic(name, "actuals"), key="late", value=json.dumps(
            {"request_id": "late", "event_time": late, "actual": 1.0}).encode())
        p.flush()
        p.close()
        deadline = time.monotonic() + 300
        while True:
            preds = read_topic(kafka.bootstrap, topic(name, "predictions"))
            metrics = read_topic(kafka.bootstrap, topic(name, "metrics"))
            if len(preds) >= len(rows) + 1 and metrics:
                break
            assert proc.poll() is None and time.monotonic() < deadline, (
                len(preds), len(metrics), (state / "scorer.log").read_text()[-3000:])
            time.sleep(2)
        dlq = read_topic(kafka.bootstrap, topic(name, "dlq"))
        by_id = {m["key"]: m["value"] for m in preds}
        for i, row in enumerate(rows):  # prediction = 1.0 * the cleaned year, as in local mode
            assert by_id[f"c{i}"]["prediction"] == float(row["year"]) and by_id[f"c{i}"]["model_version"] == v1
        reasons = sorted(m["value"]["reason"] for m in dlq)
        assert len(reasons) == 2 and reasons[0].startswith("missing request_id"), reasons
        assert reasons[1].startswith("not a JSON object"), reasons
        assert sum(m["value"]["count"] for m in metrics) > 0 and {m["value"]["model_version"] for m in metrics} == {v1}
        assert (ckpt / name / "score" / "offsets").is_dir() and not (state / "checkpoints").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    # both workers ran tasks of the scorer's application, the newest one (each executor logs its finished tasks)
    app = max(p.name for d in work_dirs for p in d.glob("app-*"))
    for d in work_dirs:
        logs = "".join(f.read_text(errors="replace") for f in (d / app).glob("*/stderr"))
        assert "Finished task" in logs, f"no task of the scorer ({app}) ran on {d}"
