"""Foundation benchmarks, all in one run (this machine is noisy, so figures are ratios side by side).

1. Cleaning throughput: raw_batches + cleaned_features vs a plain Spark CSV -> Parquet copy of the same file.
2. Sensor tick time with 10,000 files already in the landing zone (steady state, and after a lost cursor).
3. Sensor latency: file landed -> run requested, with a real dagster-daemon.

    .venv/bin/python bench/ingest_bench.py --rows 1000000
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def make_csv(rows: int) -> Path:
    from ml_platform.local.simulate import SimConfig, simulate

    d = OUT / f"used_cars_{rows}"
    path = d / "batch-00001.csv"
    if not path.exists():
        shutil.rmtree(d, ignore_errors=True)
        simulate(SimConfig("used_cars", rows_per_batch=rows, test_share=0.0), d, None, 1)
    return path


def throughput_session():
    from ml_platform.spark import local_session

    return local_session("bench", shuffle_partitions=8, driver_memory="8g")


def bench_throughput(csv: Path, rounds: int, spark=None, warm_csv: Path | None = None, warmed: bool = False) -> dict:
    """Medians of `rounds` after a warm-up round (on `warm_csv`, a smaller file, when given; none if `warmed`)."""
    from ml_platform.data.ingest import check_header, read_csv
    from ml_platform.data.layers import clean_stored_batch, ingest_batch
    from ml_platform.spec import builtin_specs
    from ml_platform.stores import LocalStore

    spark, spec = spark or throughput_session(), builtin_specs()["used_cars"]

    def plain(tmp: Path, csv: Path) -> None:
        (spark.read.option("header", True).option("multiLine", True).option("escape", '"').csv(str(csv))
         .write.mode("overwrite").parquet(str(tmp / "plain")))

    def ours(tmp: Path, csv: Path) -> dict:
        store = LocalStore(tmp / "data")
        (tmp / "data/landing/used_cars").mkdir(parents=True)
        os.link(csv, tmp / "data/landing/used_cars" / csv.name)
        t0 = time.perf_counter()
        record = ingest_batch(spark, store, spec, csv.stem)
        t1 = time.perf_counter()
        out = record | clean_stored_batch(spark, store, spec, csv.stem)
        return out | {"raw_s": t1 - t0, "clean_s": time.perf_counter() - t1}

    times = {"plain": [], "ours": [], "raw": [], "clean": []}
    summary = {}
    for i in range(1 if warmed else 0, rounds + 1):  # round 0 warms the JVM and is not counted
        for name in ("plain", "ours") if i % 2 else ("ours", "plain"):
            with tempfile.TemporaryDirectory(dir=OUT) as tmp:
                t0 = time.perf_counter()
                f = (warm_csv or csv) if i == 0 else csv
                result = plain(Path(tmp), f) if name == "plain" else ours(Path(tmp), f)
                if i:
                    times[name].append(time.perf_counter() - t0)
                if name == "ours":
                    summary = result
                    if i:
                        times["raw"].append(result["raw_s"])
                        times["clean"].append(result["clean_s"])
    head = csv.open("rb").read(65536)
    rows = read_csv(spark, str(csv), check_header(head, spec, csv.stat().st_size), spec).count()
    p, o = statistics.median(times["plain"]), statistics.median(times["ours"])
    c, r = statistics.median(times["clean"]), statistics.median(times["raw"])
    return {"rows": rows, "plain_s": p, "ours_s": o, "ratio": p / o, "plain_rows_per_s": rows / p,
            "raw_s": r, "clean_s": c, "clean_ratio": p / c, "raw_ratio": p / r,
            "ours_rows_per_s": rows / o, "cleaned": summary.get("cleaned"), "quarantined": summary.get("quarantined")}


def bench_sensor_tick(n_files: int) -> dict:
    from dagster import DagsterInstance, build_sensor_context

    from ml_platform.data.landing import Cursor, partition_key
    from ml_platform.spec import builtin_specs
    from ml_platform.stores import LocalStore
    from resources import LocalStorage
    from sensors import build_new_batch_sensor

    spec = builtin_specs()["used_cars"]
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        landing = Path(tmp) / "data/landing/used_cars"
        landing.mkdir(parents=True)
        row = ",".join(spec.column_names) + "\n" + ",".join("1" for _ in spec.column_names) + "\n"
        for i in range(n_files):
            (landing / f"old-{i:05d}.csv").write_text(row)
        old = LocalStore(Path(tmp) / "data").list_files("landing/used_cars")
        last = max(old, key=lambda f: (f.mtime_ns, f.name))
        time.sleep(0.01)
        (landing / "new-batch.csv").write_text(row)
        sensor = build_new_batch_sensor(spec, settle_seconds=0)
        res = {"storage": LocalStorage(root=str(Path(tmp) / "data"))}
        out = {}
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("used_cars_batches", [partition_key(f.name) for f in old])
            for label, cursor in (("steady", Cursor(last.mtime_ns).dump()), ("lost_cursor", None)):
                ticks = []
                for _ in range(3):
                    ctx = build_sensor_context(instance=instance, cursor=cursor, resources=res)
                    t0 = time.perf_counter()
                    result = sensor(ctx)
                    ticks.append(time.perf_counter() - t0)
                assert [r.partition_key for r in result.run_requests] == ["new-batch"], result
                out[f"tick_{label}_s"] = statistics.median(ticks)
    return out | {"files": n_files + 1}


def bench_sensor_latency(landings: int, interval: int) -> dict:
    from dagster import DagsterInstance, RunsFilter

    from ml_platform.local.simulate import SimConfig, write_batch

    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        tmp = Path(tmp)
        home = tmp / "dagster_home"
        home.mkdir()
        # runs stay queued (nothing executes): we time the request, not Spark
        (home / "dagster.yaml").write_text("run_coordinator:\n  module: dagster._core.run_coordinator\n"
                                           "  class: QueuedRunCoordinator\n  config:\n    max_concurrent_runs: 0\n"
                                           "telemetry:\n  enabled: false\n")
        env = os.environ | {"DAGSTER_HOME": str(home), "ML_PLATFORM_DATA": str(tmp / "data"),
                            "ML_PLATFORM_SENSOR_INTERVAL": str(interval)}
        staging = tmp / "staging"
        files = [write_batch(SimConfig("used_cars", 100), i, staging, None) for i in range(1, landings + 1)]
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                   str(ROOT / "workspace.yaml")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        latencies = []
        try:
            os.environ["DAGSTER_HOME"] = str(home)
            with DagsterInstance.get() as instance:
                time.sleep(interval + 20)  # daemon up and sensor ticking
                (tmp / "data/landing/used_cars").mkdir(parents=True, exist_ok=True)
                for i, f in enumerate(files):
                    time.sleep(3.7 * i % interval)  # land at varying phases of the tick
                    landed = time.time()
                    os.replace(f, tmp / "data/landing/used_cars" / f.name)
                    deadline = landed + interval * 4 + 30
                    while time.time() < deadline:
                        runs = instance.get_run_records(RunsFilter(tags={"dagster/partition": f.stem}))
                        if runs:
                            latencies.append(runs[0].create_timestamp.timestamp() - landed)
                            break
                        time.sleep(0.25)
                    else:
                        latencies.append(float("inf"))
        finally:
            from ml_platform.local.supervisor import stop_pid

            stop_pid(daemon.pid, grace=10)
    return {"interval_s": interval, "latencies_s": [round(x, 1) for x in latencies], "max_s": max(latencies),
            "goal_s": interval + 10}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1000000", help="rows of the CSV; several (100000,1000000) measure how "
                    "the cleaning scales, in one session")
    ap.add_argument("--warm-rows", type=int, default=0, help="warm the JVM on a CSV of this many rows instead of a "
                    "round on the full file")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--landings", type=int, default=4)
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--only", choices=["throughput", "tick", "latency"])
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if a.only in (None, "tick"):
        t = bench_sensor_tick(a.files)
        print(f"sensor tick, {t['files']:,} files in landing: steady {t['tick_steady_s']:.2f}s, "
              f"after a lost cursor {t['tick_lost_cursor_s']:.2f}s (goal < 5s)", flush=True)
    if a.only in (None, "latency"):
        lat = bench_sensor_latency(a.landings, a.interval)
        print(f"sensor latency (interval {lat['interval_s']}s, settle 5s): {lat['latencies_s']} s, "
              f"max {lat['max_s']:.1f}s (goal <= {lat['goal_s']}s)", flush=True)
    if a.only in (None, "throughput"):
        spark, sizes = throughput_session(), [int(x) for x in a.rows.split(",")]
        csvs = {n: make_csv(n) for n in sizes}  # generated before any timing
        warm_csv = make_csv(a.warm_rows) if a.warm_rows else None
        for k, n in enumerate(sizes):
            csv = csvs[n]
            r = bench_throughput(csv, a.rounds, spark, warm_csv, warmed=k > 0)
            print(f"cleaning throughput on {r['rows']:,} rows ({csv.stat().st_size / 1e6:.0f} MB CSV), medians:\n"
                  f"  plain CSV->Parquet          {r['plain_s']:6.1f}s ({r['plain_rows_per_s']:,.0f} rows/s)\n"
                  f"  raw_batches                 {r['raw_s']:6.1f}s  ratio {r['raw_ratio']:.2f}\n"
                  f"  cleaned_features            {r['clean_s']:6.1f}s  ratio {r['clean_ratio']:.2f} (goal >= 0.5)\n"
                  f"  raw_batches+cleaned_features {r['ours_s']:5.1f}s  ratio {r['ratio']:.2f}\n"
                  f"  cleaned {r['cleaned']:,} rows, quarantined {r['quarantined']:,}", flush=True)
            print(json.dumps({"rows_requested": n} | r), flush=True)


if __name__ == "__main__":
    main()
