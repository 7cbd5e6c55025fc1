"""The scorer's memory over a long run at a fixed share of its ceiling (issue 16).

  .venv/bin/python bench/soak_bench.py --models bench/out/models --rate 1000 --minutes 30

A real broker on loopback; the scorer as `make run` runs it (`spark_streaming.scorer.serve`: the scoring query and
the live-metrics query with its watermarked state, the scorer's session's size), serving the JVM stack of
bench/stream_bench.py; a load generator in its own process sends requests at `--rate` per second, and each
request's actual value `--actual-delay` seconds later. Every 10 s it records:

- the driver JVM's heap in use, and every 60 s the live heap (in use right after a full GC);
- the resident memory of the JVM and of the driver's Python process;
- the live-metrics query's state rows and state memory;
- the scorer's lag: requests sent and not yet scored.

Writes bench/out/soak/soak.csv and soak.png, and prints the summary: each series' median over the first 5 minutes
after the warm-up against the last 5 minutes, and its least-squares slope per 10 minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out" / "soak"

from ml_platform.spec import builtin_specs  # noqa: E402

MB = 1024 * 1024


def load(bootstrap: str, rate: float, seconds: float, delay: float, test_dir: str, sent) -> None:
    """Requests at `rate` per second for `seconds`, each request's actual `delay` seconds later; `sent` counts the
    requests handed to the producer."""
    from stream_bench import Messages

    from ml_platform.local.loadgen import actual_value, stream_rows
    from ml_platform.serve.kafka_io import producer
    from ml_platform.serve.messages import actual, encode, now_iso, topic

    spec = builtin_specs()["used_cars"]
    rows = [r for _, r in stream_rows(Path(test_dir))]
    make, ys = Messages(spec, rows), [actual_value(spec, r) for r in rows]
    acts = {}  # the actual messages, by value, as templates too
    p, pending = producer(bootstrap), deque()
    req_t, act_t = topic(spec, "requests"), topic(spec, "actuals")
    t0, i = time.monotonic(), 0
    while (now := time.monotonic()) - t0 < seconds:
        while pending and pending[0][0] <= now:
            _, rid, y = pending.popleft()
            if y not in acts:
                acts[y] = encode("actuals", actual(Messages.RID, y, Messages.AT))
            p.send(act_t, key=rid, value=acts[y].replace(Messages.RID.encode(), rid.encode()).replace(
                Messages.AT.encode(), now_iso().encode()))
        due = t0 + i / rate
        if now < due:
            time.sleep(min(due - now, 0.01))
            continue
        rid, y = f"soak-{i}", ys[i % len(ys)]
        p.send(req_t, key=rid, value=make(i, rid))
        if y is not None:
            pending.append((now + delay, rid, y))
        i += 1
        sent.value = i
    p.flush()
    p.close()


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope_per_10min(ts: list[float], ys: list[float]) -> float:
    pts = [(t, y) for t, y in zip(ts, ys, strict=True) if y == y]
    if len(pts) < 3:
        return float("nan")
    mt, my = statistics.fmean(t for t, _ in pts), statistics.fmean(y for _, y in pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (y - my) for t, y in pts) / var * 600 if var else float("nan")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["minute"] for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    ax[0].plot(t, [r["heap_used_mb"] for r in rows], lw=0.8, label="heap in use")
    live = [r for r in rows if r["heap_live_mb"] == r["heap_live_mb"]]
    ax[0].plot([r["minute"] for r in live], [r["heap_live_mb"] for r in live], "o-", ms=3, label="live (after full GC)")
    ax[0].set_ylabel("driver JVM heap, MB")
    ax[1].plot(t, [r["jvm_rss_mb"] for r in rows], label="JVM resident")
    ax[1].plot(t, [r["python_rss_mb"] for r in rows], label="driver Python resident")
    ax[1].set_ylabel("resident memory, MB")
    ax[2].plot(t, [r["state_rows"] for r in rows], label="state rows")
    ax2 = ax[2].twinx()
    ax2.plot(t, [r["state_mb"] for r in rows], color="tab:red", lw=0.8, label="state memory, MB")
    ax2.set_ylabel("state memory, MB")
    ax[2].set_ylabel("live-metrics state rows")
    ax[3].plot(t, [r["lag"] for r in rows], label="requests sent, not yet scored")
    ax[3].set_ylabel("lag, requests")
    ax[3].set_xlabel("minutes")
    for a in ax:
        a.legend(loc="upper left", fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1000, help="requests per second (70%% of the warm ceiling)")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warm-minutes", type=float, default=5, help="left out of the summary (JIT, first state)")
    ap.add_argument("--actual-delay", type=float, default=10)
    ap.add_argument("--models", help="saved stacks, as bench/stream_bench.py --models")
    a = ap.parse_args()

    from conftest import Broker
    from stream_bench import saved_stack

    from ml_platform.local.simulate import SimConfig, write_batch
    from ml_platform.serve.kafka_io import ensure_topics
    from ml_platform.serve.watcher import ChampionWatcher
    from ml_platform.spark import local_session
    from spark_streaming.scorer import Status, serve

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    spec = builtin_specs()["used_cars"]
    write_batch(SimConfig("used_cars", 4000, test_share=0.5, broken_share=0.0, seed=9), 1, OUT / "land", OUT / "test")
    broker = Broker(OUT / "kafka")
    broker.start()
    # as the scorer's own session (spark_streaming.scorer.build_session: local[2], 2 GB of driver memory)
    spark = local_session("soak", threads=2, shuffle_partitions=2, driver_memory="2g", jars_dir=ROOT / ".jars")
    jvm = spark.sparkContext._jvm
    runtime, jvm_pid = jvm.java.lang.Runtime.getRuntime(), jvm.java.lang.ProcessHandle.current().pid()
    stop, status = threading.Event(), Status(OUT / "status.json", spec.name)
    ctx = mp.get_context("spawn")  # not fork: this process runs a JVM gateway and threads
    sent = ctx.Value("q", 0)
    rows: list[dict] = []
    try:
        ensure_topics(broker.bootstrap, spec.name)
        model = saved_stack(spark, spec, "jvm", a.models)
        watcher = ChampionWatcher(lambda: "1", lambda v: model, log=lambda m: None)  # serve() takes its first load
        server = threading.Thread(target=serve, args=(spark, spec, watcher, broker.bootstrap, OUT / "state", status,
                                                      stop), daemon=True)
        server.start()
        while status.data.get("state") != "serving":
            time.sleep(1)
        gen = ctx.Process(target=load, args=(broker.bootstrap, a.rate, a.minutes * 60,
                                                                 a.actual_delay, str(OUT / "test"), sent))
        gen.start()
        t0, last_gc = time.monotonic(), 0.0
        while gen.is_alive():
            time.sleep(10)
            now = time.monotonic() - t0
            live = float("nan")
            if now - last_gc >= 60:
                jvm.java.lang.System.gc()
                live, last_gc = (runtime.totalMemory() - runtime.freeMemory()) / MB, now
            state_rows, state_bytes = 0, 0
            for q in spark.streams.active:
                for op in (q.lastProgress or {}).get("stateOperators", []):
                    state_rows += op.get("numRowsTotal", 0)
                    state_bytes += op.get("memoryUsedBytes", 0)
            scored = status.data.get("requests", 0)
            rate = (scored - rows[-1]["scored"]) / (now / 60 - rows[-1]["minute"]) / 60 if rows else 0.0
            rows.append({"minute": round(now / 60, 3), "sent": sent.value, "scored": scored,
                         "scored_per_s": round(rate),
                         "lag": sent.value - status.data.get("requests", 0),
                         "heap_used_mb": round((runtime.totalMemory() - runtime.freeMemory()) / MB, 1),
                         "heap_live_mb": round(live, 1), "jvm_rss_mb": round(rss_mb(jvm_pid), 1),
                         "python_rss_mb": round(rss_mb(), 1), "state_rows": state_rows,
                         "state_mb": round(state_bytes / MB, 2), "state": status.data.get("state")})
            print(json.dumps(rows[-1]), flush=True)
        gen.join()
    finally:
        stop.set()
        time.sleep(3)
        spark.stop()
        broker.stop()
    with (OUT / "soak.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    kept = [r for r in rows if r["minute"] >= a.warm_minutes]
    first = [r for r in kept if r["minute"] < a.warm_minutes + 5]
    last = [r for r in kept if r["minute"] >= kept[-1]["minute"] - 5]
    summary = {"rate": a.rate, "minutes": a.minutes, "sent": rows[-1]["sent"], "scored": rows[-1]["scored"]}
    for k in ("heap_used_mb", "heap_live_mb", "jvm_rss_mb", "python_rss_mb", "state_rows", "state_mb", "lag",
              "scored_per_s"):
        def med(rs, key=k):
            xs = [r[key] for r in rs if r[key] == r[key]]
            return round(statistics.median(xs), 1) if xs else None
        summary[k] = {"first_5_min": med(first), "last_5_min": med(last), "slope_per_10_min": round(
            slope_per_10min([r["minute"] * 60 for r in kept], [r[k] for r in kept]), 2)}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, OUT / "soak.png", f"scorer soak: {a.rate:.0f} requests/s for {a.minutes:.0f} min, JVM stack, local[2]")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
