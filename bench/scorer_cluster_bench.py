"""The Kafka scorer on a Spark standalone cluster: throughput with one worker and with two, beside local mode, in
one run on one broker.

  .venv/bin/python bench/scorer_cluster_bench.py --messages 20000 --warm 10000 --partitions 2

Each configuration runs in a process of its own (one SparkContext per process): `local[2]`; a master and one
worker of one core; a master and two workers of one core each. Each scores the same pre-loaded ~1 KB used_cars
requests with the JVM stack of bench/stream_bench.py (linear, random forest, gbt; trained once and kept under
bench/out/stream/models), from its own topic and checkpoint, and reports the warm throughput (the micro-batches
after the first `--warm` messages, as stream_bench's `--warm`). The requests topic has `--partitions` partitions:
one task per partition per micro-batch, so a second worker can only help with two partitions or more.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "scorer_cluster"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers: int, logs: Path) -> tuple[str, list[subprocess.Popen]]:
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = os.environ | {"SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(logs),
                        "PYSPARK_PYTHON": sys.executable}
    port, ui = free_port(), free_port()
    cls = str(spark_home / "bin" / "spark-class")
    procs = [subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                               str(port), "--webui-port", str(ui)], env=env, stdout=open(logs / "master.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)]
    for i in range(workers):
        procs.append(subprocess.Popen(
            [cls, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1", "--memory", "2g",
             "--webui-port", str(free_port()), "--work-dir", str(logs / f"work{i}"), f"spark://127.0.0.1:{port}"],
            env=env, stdout=open(logs / f"worker{i}.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as r:
                if json.load(r).get("aliveworkers", 0) >= workers:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster did not start: see {logs}")
        time.sleep(1)
    return f"spark://127.0.0.1:{port}", procs


def child(a) -> None:
    """One configuration: its own Spark (local, or a fresh cluster), the stack, a drain of its own topic."""
    from pyspark.ml import PipelineModel
    from pyspark.sql import SparkSession
    from stream_bench import Messages, drain_scorer, fixed, timed

    from ml_platform.local.supervisor import stop_pid
    from ml_platform.serve.kafka_io import ensure_topics, producer
    from ml_platform.serve.messages import topic
    from ml_platform.spark import local_jars, session_conf
    from ml_platform.spec import builtin_specs

    logs = OUT / a.child
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    master = "local[2]"
    if a.child != "local":
        master, procs = start_cluster(int(a.child.split("-")[0]), logs)
    try:
        builder = SparkSession.builder
        for k, v in session_conf(master, f"cluster-bench-{a.child}", local_jars(ROOT / ".jars"), shuffle_partitions=2,
                                 driver_memory="2g").items():
            builder = builder.config(k, v)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        spec = builtin_specs()["used_cars"]
        name = f"cb_{a.child.replace('-', '_')}_{int(time.time())}"
        spec = dataclasses.replace(spec, name=name)
        ensure_topics(a.bootstrap, name, a.partitions)
        rows = json.loads(Path(a.rows).read_text())
        make, p = Messages(spec, rows), producer(a.bootstrap)
        for i in range(a.messages + a.warm):
            p.send(topic(name, "requests"), key=f"b{i}", value=make(i, f"b{i}"))
        p.flush()
        p.close()
        model = PipelineModel.load(a.model)
        q = drain_scorer(spark, spec, fixed(model), a.bootstrap, str(logs / "ckpt"))
        seconds = timed(q, warm=a.warm)
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - (0 if master.startswith(
            "local") else 1)
        print(json.dumps({"config": a.child, "master": master, "messages": a.messages, "warm": a.warm,
                          "partitions": a.partitions, "seconds": round(seconds, 2),
                          "msg_per_s": round(a.messages / seconds), "executors": executors}), flush=True)
        spark.stop()
    finally:
        for pr in reversed(procs):
            stop_pid(pr.pid, grace=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--warm", type=int, default=10000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--configs", default="local,1-worker,2-workers")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)

    from conftest import Broker
    from stream_bench import saved_stack

    from ml_platform.local.loadgen import stream_rows
    from ml_platform.local.simulate import SimConfig, write_batch
    from ml_platform.spark import local_session
    from ml_platform.spec import builtin_specs

    OUT.mkdir(parents=True, exist_ok=True)
    models = ROOT / "bench" / "out" / "stream" / "models"
    if not (models / "jvm").exists():  # train the stack once (stream_bench keeps it in the same place)
        spark = local_session("cluster-bench-train", threads=2, driver_memory="4g")
        saved_stack(spark, builtin_specs()["used_cars"], "jvm", str(models))
        spark.stop()
    write_batch(SimConfig("used_cars", 2000, test_share=0.5, broken_share=0.0, seed=3), 1, OUT / "land", OUT / "test")
    rows_file = OUT / "rows.json"
    rows_file.write_text(json.dumps([r for _, r in stream_rows(OUT / "test")][:500]))
    broker = Broker(OUT / "kafka")
    broker.start()
    results = []
    try:
        for config in a.configs.split(","):
            r = subprocess.run([sys.executable, __file__, "--child", config, "--bootstrap", broker.bootstrap,
                                "--rows", str(rows_file), "--model", str(models / "jvm"), "--messages",
                                str(a.messages), "--warm", str(a.warm), "--partitions", str(a.partitions)],
                               capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in r.stdout.splitlines() if x.startswith("{")), None)
            if r.returncode or line is None:
                raise SystemExit(f"{config} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
            results.append(json.loads(line))
            print(line, flush=True)
    finally:
        broker.stop()
    base = next((x["msg_per_s"] for x in results if x["config"] == "local"), None)
    for x in results:
        x["vs_local"] = round(x["msg_per_s"] / base, 2) if base else None
    (OUT / "summary.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
