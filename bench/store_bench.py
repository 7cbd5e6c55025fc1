"""Prediction store speed: lookups by request_id and write throughput, the latter as a ratio to the scorer's.

  .venv/bin/python bench/store_bench.py --items 20000 --lookups 2000 --e2e 20000 --scorer-rate 1484

- write (function): prediction messages (~300 bytes) as Kafka records through the writer's own write function
  (`store_writer.write_records`: validate, BatchGetItem the keys, BatchWriteItem the new ones), batches of 2,000
  as the writer polls them; this also fills the table for the lookups.
- replay: the same records again (every key stored: the check only, nothing written).
- conditional UpdateItem: the alternative design (`SET a = if_not_exists(a, :a)` per item, 4 threads), on a
  slice, to show why the writer batches.
- end to end: messages pre-loaded into <ds>.predictions, the writer process started, timed from its first stored
  batch to the last (its startup and group join reported apart).
- lookup: `PredictionStore.lookup` of random stored request_ids, one at a time; p50 / p99.

The store server is dynalite on loopback (LevelDB under bench/out/store/), sharing the 2 cores with the client,
as in `make run`; the reference scorer throughput is bench/README.md's (JVM stack, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "bench" / "out" / "store"

from conftest import Broker  # noqa: E402
from store_service import Dynalite  # noqa: E402

from ml_platform.serve.kafka_io import ensure_topics, producer  # noqa: E402
from ml_platform.serve.messages import topic  # noqa: E402
from ml_platform.serve.store import prediction_item  # noqa: E402
from ml_platform.serve.store_writer import write_records  # noqa: E402

Record = namedtuple("Record", "topic partition offset value")
DS = "bench"


def message(i: int, prefix: str) -> dict:
    return {"request_id": f"{prefix}-{i:08d}", "prediction": 10000 + i * 0.37, "probability": None,
            "model_name": "used_cars", "model_version": "7", "event_time": "2026-01-01T00:00:00.000Z",
            "scored_at": "2026-01-01T00:00:00.250Z", "input_sha256": f"{i:064x}"}


def records(n: int, prefix: str) -> list[Record]:
    return [Record(topic(DS, "predictions"), i % 2, i, json.dumps(message(i, prefix)).encode()) for i in range(n)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks


def timed_writes(store, server: Dynalite, recs: list[Record], batch: int = 2000) -> tuple[float, float, float]:
    """msg/s, and CPU microseconds per message in this client and in the store server: on a shared, busy
    machine the CPU cost is the steadier figure (one free core for the server = 1e6 / its cost msg/s)."""
    t, c, s = time.perf_counter(), time.process_time(), cpu_seconds(server.proc.pid)
    for i in range(0, len(recs), batch):
        write_records(store, DS, recs[i:i + batch])
    n = len(recs)
    return (n / (time.perf_counter() - t), (time.process_time() - c) / n * 1e6,
            (cpu_seconds(server.proc.pid) - s) / n * 1e6)


def update_item_rate(store, n: int, threads: int = 4) -> float:
    def one(i: int) -> None:
        item = prediction_item(DS, message(i, "upd"))
        key = {"pk": item.pop("pk"), "sk": item.pop("sk")}
        names = {f"#a{j}": k for j, k in enumerate(item)}
        store.client.update_item(
            TableName=store.table, Key=key, ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":a{j}": v for j, v in enumerate(item.values())},
            UpdateExpression="SET " + ", ".join(f"#a{j} = if_not_exists(#a{j}, :a{j})" for j in range(len(item))))

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, range(n)))
    return n / (time.perf_counter() - t)


def end_to_end(broker: Broker, server: Dynalite, table: str, n: int) -> dict:
    ensure_topics(broker.bootstrap, DS)
    p = producer(broker.bootstrap)
    for r in records(n, "e2e"):
        p.send(r.topic, key=json.loads(r.value)["request_id"], value=r.value)
    p.flush()
    p.close()
    status, log = OUT / "writer.json", OUT / "writer.log"
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ml_platform.serve.store_writer", DS, "--bootstrap",
                             broker.bootstrap, "--status", str(status)], cwd=ROOT, env=server.env(table),
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    first = None
    try:
        while True:
            try:
                stored = json.loads(status.read_text()).get("stored", 0)
            except (OSError, ValueError):
                stored = 0
            if stored and first is None:
                first = (time.monotonic(), stored)
            if stored >= n:
                break
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                raise RuntimeError("writer exited or took over 600 s:\n" + log.read_text()[-2000:])
            time.sleep(0.02)
        end = time.monotonic()
    finally:
        proc.terminate()
        proc.wait(30)
    return {"startup_s": first[0] - t0, "rate": (n - first[1]) / (end - first[0])}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--lookups", type=int, default=2000)
    ap.add_argument("--e2e", type=int, default=20000, help="messages through Kafka and the writer process")
    ap.add_argument("--updates", type=int, default=2000, help="items for the conditional UpdateItem comparison")
    ap.add_argument("--scorer-rate", type=float, default=1484.0, help="the scorer's throughput, msg/s")
    a = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    server = Dynalite(OUT / "dynalite")
    broker = Broker(OUT / "kafka")
    broker.start()
    rows = []
    try:
        store = server.store("bench_predictions")
        recs = records(a.items, "fill")
        rows.append(("write (function), new keys", *timed_writes(store, server, recs)))
        rows.append(("write (function), replayed keys", *timed_writes(store, server, recs)))
        rows.append(("conditional UpdateItem, 4 threads", update_item_rate(store, a.updates), None, None))
        lat = []
        for rid in random.Random(1).choices([f"fill-{i:08d}" for i in range(a.items)], k=a.lookups):
            t = time.perf_counter()
            assert store.lookup(DS, rid)["predictions"], rid
            lat.append((time.perf_counter() - t) * 1000)
        e2e = end_to_end(broker, server, "bench_e2e", a.e2e)
        rows.append(("end to end (Kafka -> writer process -> store)", e2e["rate"], None, None))
        store.close()
    finally:
        broker.stop()
        server.stop()
    print(f"\nprediction store on dynalite, {a.items:,} items; reference scorer {a.scorer_rate:,.0f} msg/s\n")
    print(f"| {'write path':<46} | {'msg/s':>8} | {'x scorer':>8} | {'client CPU/msg':>14} | {'server CPU/msg':>14} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 10}|{'-' * 16}|{'-' * 16}|")
    for name, rate, client, srv in rows:
        us = [f"{v:,.0f} us" if v is not None else "" for v in (client, srv)]
        print(f"| {name:<46} | {rate:>8,.0f} | {rate / a.scorer_rate:>8.2f} | {us[0]:>14} | {us[1]:>14} |")
    print(f"uptime load average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"\nlookup by request_id ({a.lookups:,} random of {a.items:,}): p50 {pct(lat, 0.5):.1f} ms, "
          f"p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms")
    print(f"writer process: {e2e['startup_s']:.1f} s from start to its first stored batch (imports, table, join)")


if __name__ == "__main__":
    main()
