"""REST API speed, side by side with `mlflow models serve` on the same champion, in one run.

  .venv/bin/python bench/api_bench.py                 # 50 req/s for 30 s each, 100,000-row batch
  .venv/bin/python bench/api_bench.py --quick         # 50 req/s for 10 s each, 10,000-row batch (~5 min)

- single row: open-loop load (each request sent on a fixed schedule, latency measured from its scheduled time, so
  queueing counts) at `--rate` for `--seconds` against the API (`python -m api` on uvicorn, in a subprocess) and
  against `mlflow models serve --env-manager local` of the same registered version (sent the same rows, cleaned by
  clean_batch, as its signature wants). p50/p95/p99 and errors; the API's /metrics before and after give the
  Spark calls behind the figure (ml_platform_spark_call_seconds) and the rows per call.
- batch: a `--rows` CSV through POST /datasets/used_cars/predict/batch (a job, polled to done) against
  read_csv + clean_batch + model.transform + an aggregate over the predictions in a local Spark session here.

Everything runs on free loopback ports under bench/out/api/: a throwaway MLflow server, a Kafka broker for the
prediction log (`--no-kafka`: none, and the publish errors are counted), the champion = a stack of linear +
random_forest trained on 300 simulated rows with the product's functions.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "bench" / "out" / "api"
KEY = "bench-key-0123456789abcdef"
GOAL_P99_MS = 50.0

from conftest import Broker, free_port  # noqa: E402
from services import MlflowServer, _http_ok  # noqa: E402

from ml_platform.local.simulate import SimConfig, write_batch  # noqa: E402
from ml_platform.local.supervisor import stop_pid  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import builtin_specs  # noqa: E402


def train_champion(spark, spec, tracker) -> str:
    """The tiny stacked used_cars model of the serving measurements: linear + random_forest, 2 folds, 300 rows,
    registered and promoted to champion."""
    from training_data import SMALL, land_batches, small

    from ml_platform.stores import LocalStore
    from ml_platform.train.features import build_feature_pipeline
    from ml_platform.train.models import train_models
    from ml_platform.train.release import stack_and_register
    from ml_platform.train.training_set import build_training_set

    s = small(spec, algorithms={a: SMALL[a] for a in ("linear", "random_forest")}, folds=2)
    store = LocalStore(OUT / "data")
    land_batches(spark, store, s, [1], rows=300)
    build_training_set(spark, store, s, "v1")
    build_feature_pipeline(spark, store, s, "v1")
    train_models(spark, store, s, "v1", list(s.algorithms), 2, log=lambda _: None)
    version = stack_and_register(spark, store, tracker, s, "v1", {"bench": "api"})["model_version"]
    tracker.promote(spec.name, version)
    return version


def start(cmd: list[str], env: dict, log: Path, url: str, what: str, seconds: float = 600) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=os.environ | env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + seconds
    while not _http_ok(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pid(proc.pid)
            raise RuntimeError(f"{what} did not start; see {log}:\n{log.read_text()[-2000:]}")
        time.sleep(1)
    return proc


def wait_ready(base: str, seconds: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        r = httpx.get(f"{base}/ready", headers={"X-API-Key": KEY}, timeout=10)
        if r.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"API not ready in {seconds:.0f} s: {r.text[:500]}")
        time.sleep(1)


async def _open_loop(url: str, body, headers: dict, rate: float, seconds: float, timeout: float):
    """One request (`body(i)`) every 1/rate s whatever the answers; each latency counts from its scheduled send
    time. A 200 whose API answer has a rejected row is an error too."""
    import httpx

    n = int(rate * seconds)
    lat, errors = [], {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers) as client:
        t0 = time.perf_counter() + 0.5

        async def one(i: int) -> None:
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                r = await client.post(url, json=body(i))
                key = f"HTTP {r.status_code}" if r.status_code != 200 else (
                    "ok" if r.json().get("rejected", 0) == 0 else "rejected row")
            except Exception as e:  # a timeout or refused connection is an error of the run, not of the bench
                key = type(e).__name__
            if key == "ok":
                lat.append((time.perf_counter() - due) * 1000)
            else:
                errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return n, lat, errors


def load(url, body, headers, rate, seconds, timeout) -> dict:
    n, lat, errors = asyncio.run(_open_loop(url, body, headers, rate, seconds, timeout))
    lat.sort()

    def p(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

    return {"sent": n, "ok": len(lat), "errors": errors, "p50_ms": p(0.5), "p95_ms": p(0.95), "p99_ms": p(0.99),
            "max_ms": round(lat[-1], 1) if lat else None}


def scrape(base: str) -> dict:
    """The sums, counts and buckets of the API's own histograms and counters this bench reads."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", headers={"X-API-Key": KEY}, timeout=30).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(("ml_platform_spark_call_seconds", "ml_platform_predictions_total",
                                  "ml_platform_publish_errors_total")) or (
                    s.name.startswith("ml_platform_http_request_seconds") and s.labels.get("route", "").endswith(
                        "/predict")):
                out[(s.name, s.labels.get("le"))] = out.get((s.name, s.labels.get("le")), 0) + s.value
    return out


def breakdown(before: dict, after: dict) -> dict:
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = d.get(("ml_platform_spark_call_seconds_count", None), 0)
    spark_s = d.get(("ml_platform_spark_call_seconds_sum", None), 0)
    rows = d.get(("ml_platform_predictions_total", None), 0)
    reqs = d.get(("ml_platform_http_request_seconds_count", None), 0)
    buckets = {float(le): v for (n, le), v in d.items() if n == "ml_platform_spark_call_seconds_bucket"
               and le not in (None, "+Inf")}
    return {"spark_calls": int(calls), "spark_call_mean_s": round(spark_s / calls, 2) if calls else None,
            "spark_busy_s": round(spark_s, 1), "rows_scored": int(rows),
            "rows_per_call": round(rows / calls, 1) if calls else None,
            "server_request_mean_s": round(d.get(("ml_platform_http_request_seconds_sum", None), 0) / reqs, 2)
            if reqs else None,
            "spark_calls_under_s": {le: int(v) for le, v in sorted(buckets.items()) if le >= 0.05},
            "publish_errors": int(d.get(("ml_platform_publish_errors_total", None), 0))}


def batch_via_api(base: str, path: Path) -> dict:
    import httpx

    t0 = time.perf_counter()
    with open(path, "rb") as f:
        r = httpx.post(f"{base}/datasets/used_cars/predict/batch", content=f.read(), timeout=600,
                       headers={"X-API-Key": KEY, "Content-Type": "text/csv"})
    if r.status_code == 200:  # small enough to be answered at once
        return {"rows": sum(1 for _ in csv.reader(r.text.splitlines())) - 1, "seconds": time.perf_counter() - t0}
    r.raise_for_status()
    job = r.json()
    while job["status"] in ("queued", "running"):
        time.sleep(1)
        job = httpx.get(f"{base}/datasets/used_cars/predict/batch/{job['job_id']}", headers={"X-API-Key": KEY},
                        timeout=30).json()
    dt = time.perf_counter() - t0
    if job["status"] != "done":
        raise RuntimeError(f"batch job failed: {job.get('error')}")
    return {"rows": job["rows_total"], "scored": job["scored"], "seconds": dt}


def batch_in_spark(spark, spec, model, path: Path) -> dict:
    """The same file, read and cleaned as the batch path does, scored; an aggregate over `prediction` so that
    Spark cannot prune the model away (a bare count would)."""
    from pyspark.sql import functions as F

    from ml_platform.data.cleaning import clean_batch
    from ml_platform.data.ingest import check_header, read_csv

    with open(path, "rb") as f:
        header = check_header(f.read(65536), spec, path.stat().st_size)
    t0 = time.perf_counter()
    scored = model.transform(clean_batch(read_csv(spark, str(path), header, spec), spec))
    n, _ = scored.agg(F.count("*"), F.sum("prediction")).first()
    return {"rows": n, "seconds": time.perf_counter() - t0}


def request_rows(spark, spec, path: Path, k: int = 200) -> tuple[list[dict], list[dict]]:
    """The first `k` rows of the batch file: raw (as a REST client sends them, no target) and cleaned by
    clean_batch (as the MLflow signature wants: the cleaned columns but the target, dates as ISO text)."""
    from ml_platform.data.cleaning import clean_batch

    with open(path, newline="", encoding="utf-8") as f:
        raw = [r for _, r in zip(range(k), csv.DictReader(f), strict=False)]
    cols = [c for c in spec.column_names]
    df = spark.createDataFrame([tuple(r.get(c) for c in cols) for r in raw], ", ".join(f"`{c}` string" for c in cols))
    keep = [c for c in spec.cleaned_columns if c != spec.target]
    cleaned = [{c: json.loads(j).get(c) for c in keep} for j in clean_batch(df, spec).select(*keep).toJSON().collect()]
    return [{c: v for c, v in r.items() if c != spec.target} for r in raw], cleaned


def table(rep: dict) -> str:
    api, peer = rep["single_api"], rep["single_mlflow"]

    def ratio(a, b):
        return f"{a / b:.2f}×" if a and b else "—"

    lines = ["| single row, open loop | API | mlflow models serve | API / mlflow |", "|---|---|---|---|"]
    for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        lines.append(f"| {k.replace('_ms', '')} (ms) | {api[k]} | {peer[k]} | {ratio(api[k], peer[k])} |")
    lines.append(f"| ok / sent | {api['ok']} / {api['sent']} | {peer['ok']} / {peer['sent']} | |")
    lines.append(f"| errors | {api['errors'] or 0} | {peer['errors'] or 0} | |")
    b = rep.get("batch")
    if b:
        a, s = b["api"], b["spark"]
        lines += ["", "| batch | rows | seconds | rows/s |", "|---|---|---|---|",
                  f"| POST /predict/batch (job) | {a['rows']} | {a['seconds']:.1f} | {a['rows'] / a['seconds']:,.0f} |",
                  f"| local Spark clean_batch + transform | {s['rows']} | {s['seconds']:.1f} | "
                  f"{s['rows'] / s['seconds']:,.0f} |",
                  f"| API / Spark | | | {(a['rows'] / a['seconds']) / (s['rows'] / s['seconds']):.3f}× |"]
    p99 = api["p99_ms"]
    met = p99 is not None and p99 <= GOAL_P99_MS and not api["errors"]
    lines += ["", f"Goal: single-row p99 ≤ {GOAL_P99_MS:.0f} ms at {rep['rate']:g} req/s. Measured: p99 "
                  f"{p99} ms, {sum(api['errors'].values())} errors — **{'met' if met else 'not met'}**.",
              f"Where the time goes (API /metrics during the run): {json.dumps(rep['breakdown'])}",
              f"Load average: before {rep['load_before']}, after {rep['load_after']}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the batch CSV (0: skip the batch part)")
    ap.add_argument("--timeout", type=float, default=180, help="client timeout per request, s")
    ap.add_argument("--quick", action="store_true", help="--seconds 10 --rows 10000")
    ap.add_argument("--no-kafka", action="store_true", help="no broker: the prediction log writes fail, counted")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.rows = 10, 10_000
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    spec = builtin_specs()["used_cars"]
    procs: list[subprocess.Popen] = []
    broker = mlflow = spark = None
    rep = {"rate": a.rate, "seconds": a.seconds, "load_before": os.getloadavg()}
    try:
        (OUT / "mlflow").mkdir()
        mlflow = MlflowServer(OUT / "mlflow")
        spark = local_session("api-bench", threads=2, shuffle_partitions=2, driver_memory="2g")
        spark.sparkContext.setLogLevel("ERROR")
        from ml_platform.train.registry import Tracker

        tracker = Tracker(mlflow.uri)
        version = train_champion(spark, spec, tracker)
        model = tracker.load(spec.name, version)
        batch_file = write_batch(SimConfig("used_cars", max(a.rows, 200), test_share=0.0, broken_share=0.0, seed=21),
                                 1, OUT / "batch", None)
        raw, cleaned = request_rows(spark, spec, batch_file)
        print(f"champion v{version}; {len(raw)} request rows, {len(cleaned)} cleaned", flush=True)
        bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there without a broker
        if not a.no_kafka:
            from ml_platform.serve.kafka_io import ensure_topics

            broker = Broker(OUT / "kafka")
            broker.start()
            bootstrap = broker.bootstrap
            ensure_topics(bootstrap, spec.name)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {"MLFLOW_TRACKING_URI": mlflow.uri, "ML_PLATFORM_API_KEYS": KEY, "ML_PLATFORM_DATASETS": "used_cars",
               "ML_PLATFORM_HOME": str(OUT / "home"), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               # the default per-key limit (1,200/min) is below the offered load
               "ML_PLATFORM_API_RATE_PER_MINUTE": str(int(a.rate * 60 * 10)),
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        procs.append(start([sys.executable, "-m", "api", "--port", str(port)], env, OUT / "api.log",
                           f"{base}/health", "API"))
        wait_ready(base)
        hdr = {"X-API-Key": KEY}
        url = f"{base}/datasets/used_cars/predict"
        print("warm-up", load(url, lambda i: {"rows": [dict(raw[i], request_id=f"w{i}")]}, hdr, 1, 5, a.timeout),
              flush=True)
        before = scrape(base)
        rep["single_api"] = load(url, lambda i: {"rows": [dict(raw[i % len(raw)], request_id=f"s{i}")]}, hdr,
                                 a.rate, a.seconds, a.timeout)
        rep["breakdown"] = breakdown(before, scrape(base))
        print(json.dumps({"api": rep["single_api"], "breakdown": rep["breakdown"]}), flush=True)
        if a.rows:
            rep["batch"] = {"api": batch_via_api(base, batch_file)}
            print(json.dumps(rep["batch"]), flush=True)
        stop_pid(procs.pop().pid)  # the peer gets the machine to itself
        p2 = free_port()
        procs.append(start([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                            f"models:/{spec.name}/{version}", "--env-manager", "local", "-h", "127.0.0.1",
                            "-p", str(p2), "-t", "120"],
                           # it execs `uvicorn` by name: the venv's bin must be on PATH
                           env | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
                           OUT / "mlflow-serve.log",
                           f"http://127.0.0.1:{p2}/health", "mlflow models serve"))
        peer = f"http://127.0.0.1:{p2}/invocations"
        print("warm-up", load(peer, lambda i: {"dataframe_records": [cleaned[i]]}, {}, 1, 5, a.timeout), flush=True)
        rep["single_mlflow"] = load(peer, lambda i: {"dataframe_records": [cleaned[i % len(cleaned)]]}, {}, a.rate,
                                    a.seconds, a.timeout)
        print(json.dumps({"mlflow": rep["single_mlflow"]}), flush=True)
        stop_pid(procs.pop().pid)
        if a.rows:
            batch_in_spark(spark, spec, model, batch_file)  # warm-up: the first plan of the session
            rep["batch"]["spark"] = batch_in_spark(spark, spec, model, batch_file)
        rep["load_after"] = os.getloadavg()
        (OUT / "report.json").write_text(json.dumps(rep, indent=1, default=str))
        print(table(rep), flush=True)
    finally:
        for p in procs:
            stop_pid(p.pid)
        if spark is not None:
            spark.stop()
        if broker is not None:
            broker.stop()
        if mlflow is not None:
            mlflow.stop()


if __name__ == "__main__":
    main()
