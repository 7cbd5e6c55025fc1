"""The batch backlog under `make run`'s drip: the whole stack (`ml-platform up`: broker, MLflow, Dagster, the
simulator dripping batches, the scorer and the producer's requests) runs for a while, and every `--sample` seconds
the batch accounting (assets/accounting.py over the instance's run records and the store) is read: how many batches
are in each state, the age of the oldest batch not yet handled, and the run queue's depth.

    .venv/bin/python bench/backlog_bench.py --minutes 30                 # make run's default drip (5,000 rows / 90 s)
    .venv/bin/python bench/backlog_bench.py --minutes 12 --every 30      # a faster drip

Writes bench/out/backlog/<every>s.json and .png. The summary gives the busy share of the two run slots
(max_concurrent_runs: 2) spent on batch runs and on retrains, and from it the drip interval the platform sustains:
the interval at which batch runs alone would fill what the retrains leave free.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench/out/backlog"
SLOTS = 2  # the queued run coordinator's max_concurrent_runs under make run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_pair() -> int:
    """A port whose next one is free too (the broker's controller uses it)."""
    while True:
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue


def sample(instance, store, spec, t0: float) -> dict:
    from assets.accounting import batch_states
    from ml_platform.data.accounting import summarize

    now = time.time()
    batches, runs = batch_states(instance, store, spec, now)
    s = summarize(batches, runs, now)
    return {"t": round(now - t0, 1), "counts": s["counts"], "oldest_unhandled_age_s": s["oldest_unhandled_age_s"],
            "queue_depth": s["queue_depth"], "in_flight": s["in_flight"], "landed": len(batches),
            "load_average": round(os.getloadavg()[0], 2)}  # the machine is shared: say how busy it was


def busy_shares(instance, spec, t0: float, t1: float) -> dict:
    """Seconds of run-slot time inside [t0, t1] spent by batch runs and by other (retrain) runs of the dataset."""
    from assets.accounting import runs_from_instance
    from ml_platform.data.accounting import BATCH_LAYERS

    busy = {"batch": 0.0, "retrain": 0.0}
    durations = {"batch": [], "retrain": []}
    records = {r.dagster_run.run_id: r for r in instance.get_run_records(limit=5000)}
    for f in runs_from_instance(instance, spec, limit=5000):
        r = records.get(f.run_id)
        if f.layer is None or r is None or r.start_time is None:
            continue
        kind = "batch" if f.layer in BATCH_LAYERS else "retrain"
        start, end = r.start_time, r.end_time or t1
        overlap = max(0.0, min(end, t1) - max(start, t0))
        busy[kind] += overlap
        if r.end_time and start >= t0:
            durations[kind].append(r.end_time - start)
    window = (t1 - t0) * SLOTS
    out = {f"{k}_share": round(v / window, 3) for k, v in busy.items()}
    for k, d in durations.items():
        d.sort()
        out[f"{k}_runs"] = len(d)
        out[f"{k}_run_seconds_median"] = round(d[len(d) // 2], 1) if d else None
    return out


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [(s["oldest_unhandled_age_s"] or 0) for s in samples], label="oldest unhandled batch age (s)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("seconds")
    ax2 = ax.twinx()
    ax2.step(t, [s["queue_depth"] for s in samples], where="post", color="tab:red", label="queued runs")
    ax2.step(t, [s["counts"]["waiting"] + s["counts"]["running"] for s in samples], where="post",
             color="tab:green", label="batches waiting or running")
    ax2.set_ylabel("count")
    fig.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--every", type=float, default=90, help="seconds between simulated batches (make run: 90)")
    ap.add_argument("--rows", type=int, default=5000, help="rows per batch (make run: 5000)")
    ap.add_argument("--sample", type=float, default=30)
    ap.add_argument("--home", default="/tmp/backlog-bench")
    a = ap.parse_args()

    import shutil

    home = Path(a.home)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    ports = {"--kafka-port": free_pair(), "--mlflow-port": free_port(), "--dagster-port": free_port(),
             "--api-port": free_port(), "--store-port": free_port()}
    cmd = [str(ROOT / ".venv/bin/ml-platform"), "up", "--home", str(home), "--every", str(a.every),
           "--rows-per-batch", str(a.rows)] + [x for k, v in ports.items() for x in (k, str(v))]
    # a SIGTERM to this script still stops the stack it started (the finally below)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    log = open(home / "up.log", "wb")
    env = os.environ | {"ML_PLATFORM_HOME": str(home)}
    up = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while b"stack is up" not in (home / "up.log").read_bytes():
            if up.poll() is not None or time.monotonic() > deadline:
                print((home / "up.log").read_text(errors="replace")[-3000:])
                return 1
            time.sleep(2)
        from dagster import DagsterInstance

        from ml_platform.spec import builtin_specs
        from ml_platform.stores import LocalStore

        spec = builtin_specs()["used_cars"]
        instance = DagsterInstance.from_config(str(home / "dagster_home"))
        store = LocalStore(home / "data")
        t0, samples = time.time(), []
        while time.time() - t0 < a.minutes * 60:
            time.sleep(a.sample)
            samples.append(sample(instance, store, spec, t0))
            s = samples[-1]
            print(f"{s['t'] / 60:5.1f} min  {s['counts']}  oldest {s['oldest_unhandled_age_s']}  "
                  f"queue {s['queue_depth']}", flush=True)
        shares = busy_shares(instance, spec, t0, time.time())
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(timeout=180)
    ages = [s["oldest_unhandled_age_s"] or 0 for s in samples]
    half = samples[len(samples) // 2:]
    pending = [s["counts"]["waiting"] + s["counts"]["running"] for s in samples]
    # batch runs take `batch_share` of the slots at this drip; retrains take `retrain_share` whatever the drip
    # (one retrain at a time, back to back when busy): batch runs could fill the rest
    free_for_batches = max(0.0, 1.0 - shares["retrain_share"])
    sustained = a.every * shares["batch_share"] / free_for_batches if free_for_batches else None
    loads = sorted(s["load_average"] for s in samples)
    summary = {"every_s": a.every, "rows_per_batch": a.rows, "minutes": a.minutes,
               "load_average_median": loads[len(loads) // 2],
               "landed": samples[-1]["landed"], "final_counts": samples[-1]["counts"],
               "oldest_unhandled_age_s": {"median": sorted(ages)[len(ages) // 2], "max": max(ages),
                                          "last": ages[-1]},
               "queue_depth_max": max(s["queue_depth"] for s in samples),
               "pending_first_half_mean": round(sum(pending[:len(pending) // 2]) / max(1, len(pending) // 2), 2),
               "pending_second_half_mean": round(sum(p["counts"]["waiting"] + p["counts"]["running"] for p in half)
                                                 / max(1, len(half)), 2),
               **shares, "sustained_every_s_estimate": round(sustained, 1) if sustained else None}
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"{a.every:g}s"
    stem.with_suffix(".json").write_text(json.dumps({"summary": summary, "samples": samples}, indent=1))
    plot(samples, stem.with_suffix(".png"), f"make run drip: {a.rows} rows every {a.every:g} s")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
