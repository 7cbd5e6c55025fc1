"""The `ml-platform` command: infer and check dataset specs, simulate data, run the local stack, send prediction
traffic, watch predictions and live metrics, roll a served model back, hand out presigned upload URLs, say where
every landed batch stands (`batches`) and whether the stack is healthy (`doctor`).

Datasets are the specs in the directory named by ML_PLATFORM_SPECS (default: the shipped examples)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _spec(a, name: str | None = None):
    """The spec of dataset `name` (default: a.dataset) from the configured spec directory; an unknown name ends
    the command with exit code 2 and a message listing the datasets there and the spec files that are broken."""
    from ml_platform.spec import load_spec_dir

    name = name or a.dataset
    found = load_spec_dir(a.specs)
    if name in found.specs:
        return found.specs[name]
    lines = [f"unknown dataset {name!r}; datasets in {found.directory}: {sorted(found.specs) or 'none'}"]
    lines += [f"  broken spec {f}: {err}" for f, err in sorted(found.errors.items())]
    print("\n".join(lines), file=sys.stderr)
    raise SystemExit(2)


def _infer(a) -> int:
    from ml_platform.spec_infer import InferError, infer_spec

    out = Path(a.out) if a.out else None
    if out and out.exists() and not a.force:
        print(f"{out} exists; give --force to overwrite it", file=sys.stderr)
        return 2
    try:
        text = infer_spec(a.csv, a.target, a.name, a.sample_rows)
    except InferError as e:
        print(f"spec infer: {e}", file=sys.stderr)
        return 2
    if out is None:
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: review the guesses (each has a comment), then put it in the spec directory "
          f"(ML_PLATFORM_SPECS)", file=sys.stderr)
    return 0


def _check(a) -> int:
    from ml_platform.spec import SpecError, load_spec, load_spec_dir

    target = Path(a.path) if a.path else None
    if target is not None and target.is_file():
        try:
            spec = load_spec(target)
        except SpecError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"{target}: dataset {spec.name} ({spec.task}, target {spec.target}) is valid")
        return 0
    found = load_spec_dir(target or a.specs)
    for name, spec in sorted(found.specs.items()):
        print(f"ok      {name} ({spec.task}, target {spec.target})")
    for f, err in sorted(found.errors.items()):
        print(f"broken  {f}: {err}")
    return 1 if found.errors else 0


def _simulate(a) -> int:
    from ml_platform.local.simulate import GENERATORS, SimConfig, simulate

    _spec(a)
    if a.dataset not in GENERATORS:
        print(f"no simulator for dataset {a.dataset!r}; simulators exist for {sorted(GENERATORS)}", file=sys.stderr)
        return 2
    if a.drift and a.dataset != "used_cars":
        print(f"--drift: only the used_cars simulator has a market to move, not {a.dataset!r}", file=sys.stderr)
        return 2
    cfg = SimConfig(a.dataset, a.rows_per_batch, seed=a.seed, test_share=a.test_share, broken_share=a.broken_share,
                    drift=a.drift)
    written = simulate(cfg, Path(a.landing), Path(a.test_dir) if a.test_dir else None, a.batches, a.every,
                       show_progress=not a.quiet,
                       on_batch=lambda p: print(f"landed {p}", flush=True) if a.every else None)
    if not a.every:
        print(f"wrote {len(written)} batch(es) to {a.landing}")
    return 0


def _rollback(a) -> int:
    from ml_platform.train.registry import Tracker

    _spec(a)
    try:
        old, new = Tracker(a.tracking_uri).rollback(a.dataset)
    except ValueError as e:
        print(f"rollback refused: {e}", file=sys.stderr)
        return 2
    print(f"{a.dataset}: champion moved from version {old} back to version {new} "
          f"(version {old} is now previous_champion; roll back again to undo)")
    return 0


def _produce(a) -> int:
    from ml_platform.local.loadgen import produce

    spec = _spec(a)
    test_dir = Path(a.test_dir or Path(os.environ.get("ML_PLATFORM_DATA", REPO / ".local" / "data")) / "test_stream"
                    / a.dataset)
    if a.wait_for_champion:
        from ml_platform.train.registry import CHAMPION, Tracker

        tracker, said = Tracker(a.tracking_uri), False
        while tracker.version_for(spec.name, CHAMPION) is None:
            if not said:
                print(f"produce {spec.name}: waiting for a champion before sending requests", flush=True)
                said = True
            time.sleep(5)
    while not any(test_dir.glob("*.csv")):
        print(f"produce {spec.name}: no test-stream files in {test_dir} yet; waiting", flush=True)
        time.sleep(10)
    while True:
        sent = produce(spec, a.bootstrap, test_dir, a.rate, a.count, a.actual_delay, a.actual_drop, a.malformed,
                       a.seed, max_pending=a.max_pending)
        print(f"produce {spec.name}: {sent}", flush=True)
        if not a.loop:
            return 1 if sent["failed_requests"] or sent["failed_actuals"] else 0


def _tail(a) -> int:
    from ml_platform.serve.kafka_io import tail

    _spec(a)
    home = Path(os.environ.get("ML_PLATFORM_HOME", ".local"))
    tail(a.bootstrap, a.dataset, status_path=home / f"scorer-{a.dataset}.json", from_beginning=a.from_beginning,
         metrics_only=a.metrics_only)
    return 0


def _upload_url(a) -> int:
    import json

    from ml_platform.layout import landing_dir
    from ml_platform.stores import StorageError, open_store

    spec = _spec(a)
    if "/" in a.file_name or not a.file_name.lower().endswith(".csv"):
        print(f"{a.file_name!r}: give a plain file name ending in .csv (it lands in {landing_dir(spec)}/)",
              file=sys.stderr)
        return 2
    if not a.data_root.startswith(("s3://", "s3a://")):
        print(f"presigned uploads need the store on S3; ML_PLATFORM_DATA is {a.data_root!r}", file=sys.stderr)
        return 2
    try:
        grant = open_store(a.data_root, endpoint_url=a.s3_endpoint).presigned_upload(
            f"{landing_dir(spec)}/{a.file_name}", max_bytes=int(a.max_mb * 1024 * 1024), expires_seconds=a.expires)
    except StorageError as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps({"url": grant.url, "fields": grant.fields, "key": grant.key, "max_bytes": grant.max_bytes,
                      "expires_seconds": grant.expires_seconds, "curl": grant.curl(a.file_name)}, indent=2))
    return 0


def _reproduce(a) -> int:
    """Rebuild a registered version's training set by time travel and train it again; exit 1 when a metric differs by
    more than --tolerance."""
    import json

    from ml_platform.spark import local_session
    from ml_platform.stores import open_store
    from ml_platform.train.registry import Tracker
    from ml_platform.train.reproduce import reproduce_training
    from ml_platform.train.training_set import TrainingError

    spec = _spec(a)
    tracker = Tracker(a.tracking_uri)
    try:
        tags = tracker.version_tags(a.dataset, a.model_version)
    except Exception as e:  # noqa: BLE001 - MLflow's own message names what is missing
        print(f"reproduce: no registered version {a.model_version} of {a.dataset}: {e}", file=sys.stderr)
        return 2
    if "training_version" not in tags:
        print(f"reproduce: version {a.model_version} of {a.dataset} has no training_version tag", file=sys.stderr)
        return 2
    run = tracker.client.get_run(tracker.client.get_model_version(a.dataset, a.model_version).run_id)
    served = {k.removeprefix("stack_holdout_"): v for k, v in run.data.metrics.items()
              if k.startswith("stack_holdout_")}
    silver = int(tags["silver_version"]) if tags.get("silver_version", "").isdigit() else None
    spark = local_session("ml-platform-reproduce", threads=a.threads, shuffle_partitions=a.threads * 2,
                          driver_memory=a.driver_memory, jars_dir=a.jars, jar_groups=(
                              ("spark", "aws") if _data_root(a).startswith("s3") else ("spark",)))
    try:
        out = reproduce_training(spark, open_store(_data_root(a)), spec, tags["training_version"], silver,
                                 recorded_served=served, log=lambda line: print(line, file=sys.stderr))
    except TrainingError as e:
        print(f"reproduce refused: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1, default=str))
    same = out["max_abs_diff"] <= a.tolerance
    print(f"{a.dataset} version {a.model_version}: rebuilt from silver version {out['silver_version']} as "
          f"{out['reproduced_version']}; largest metric difference {out['max_abs_diff']:.3g} "
          f"({'within' if same else 'over'} {a.tolerance:g})", file=sys.stderr)
    return 0 if same else 1


def _data_root(a) -> str:
    return a.data_root or str(Path(a.home) / "data")


def _batches(a) -> int:
    import dataclasses
    import json
    import shutil

    from ml_platform.data.accounting import account, read_store_facts, render_table, summarize
    from ml_platform.local import dagster_gql as gql
    from ml_platform.stores import StorageError, open_store

    spec = _spec(a)
    try:
        facts = read_store_facts(open_store(_data_root(a)), spec)
        known = gql.known_partitions(a.dagster_url, spec)
        runs = gql.runs_from_graphql(a.dagster_url, spec,
                                     settled=set(facts.accepted) | set(facts.superseded) | set(facts.not_accepted))
    except (StorageError, gql.DagsterError) as e:
        print(f"batches {spec.name}: {e}", file=sys.stderr)
        return 1
    now = time.time()
    batches = account(spec, facts, known, runs, now, a.max_attempts)
    summary = summarize(batches, runs, now)
    shown = [b for b in batches if a.state in (None, b.state)]
    if a.json:
        print(json.dumps({"dataset": spec.name, "batches": [dataclasses.asdict(b) for b in shown], "summary": summary},
                         indent=1))
        return 0
    print(render_table(shown, now, width=shutil.get_terminal_size((160, 24)).columns))
    age = summary["oldest_unhandled_age_s"]
    print(f"{spec.name}: {len(batches)} batch(es): " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
          + f"; oldest unhandled {'-' if age is None else f'{age / 60:.0f} min'}; runs queued {summary['queue_depth']}"
          f", in flight {summary['in_flight']}")
    return 0


def _doctor(a) -> int:
    from ml_platform.local.doctor import render, run_doctor
    from ml_platform.stores import StorageError, open_store

    specs = [_spec(a, name) for name in a.datasets.split(",")]
    try:
        store = open_store(_data_root(a))
    except StorageError as e:
        print(f"doctor: {e}", file=sys.stderr)
        return 2
    checks = run_doctor(Path(a.home), a.dagster_url.rstrip("/"), specs, store, a.tracking_uri, a.stuck_minutes,
                        max_attempts=a.max_attempts)
    print(render(checks))
    failed = sum(c.level == "FAIL" for c in checks)
    print(f"{failed} FAIL, {sum(c.level == 'WARN' for c in checks)} WARN, {sum(c.level == 'OK' for c in checks)} OK")
    return 1 if failed else 0


def _stack_config(a):
    from ml_platform.local.supervisor import StackConfig

    for name in a.datasets.split(","):
        _spec(a, name)
    return StackConfig(home=Path(a.home), repo=REPO, jars=Path(a.jars).resolve(), kafka_port=a.kafka_port,
                       kafka_controller_port=a.kafka_port + 1, mlflow_port=a.mlflow_port, dagster_port=a.dagster_port,
                       api_port=a.api_port, store_port=a.store_port, datasets=tuple(a.datasets.split(",")),
                       every=a.every, rows_per_batch=a.rows_per_batch, sensor_interval=a.sensor_interval,
                       scorer_metrics_port=a.scorer_metrics_port, specs=Path(a.specs) if a.specs else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ml-platform", description=__doc__)
    p.add_argument("--specs", default=os.environ.get("ML_PLATFORM_SPECS"),
                   help="spec directory (default: $ML_PLATFORM_SPECS, else the shipped examples)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("spec", help="write a starter spec from a CSV file, or check specs")
    spsub = sp.add_subparsers(dest="spec_command", required=True)
    si = spsub.add_parser("infer", help="guess a spec from a sample of a CSV file; each guess is commented")
    si.add_argument("csv", help="a CSV file with a header line")
    si.add_argument("--target", required=True, help="the column to predict")
    si.add_argument("--out", help="spec file to write (default: print it)")
    si.add_argument("--name", help="dataset name (default: from the file name)")
    si.add_argument("--sample-rows", type=int, default=1000, help="rows read from the top of the file")
    si.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    si.set_defaults(func=_infer)
    sc = spsub.add_parser("check", help="validate one spec file, or every spec of a directory")
    sc.add_argument("path", nargs="?", help="a spec file or directory (default: --specs)")
    sc.set_defaults(func=_check)

    s = sub.add_parser("simulate", help="write simulated batches into a landing zone")
    s.add_argument("dataset")
    s.add_argument("--landing", required=True, help="folder the batches are dropped into")
    s.add_argument("--test-dir", help="folder for the held-out test stream (one file per batch)")
    s.add_argument("--batches", type=int, default=1)
    s.add_argument("--rows-per-batch", type=int, default=10_000)
    s.add_argument("--every", type=float, default=0.0, help="seconds between batches (0: all at once)")
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--test-share", type=float, default=0.1)
    s.add_argument("--broken-share", type=float, default=0.002, help="share of deliberately broken rows")
    s.add_argument("--drift", type=float, default=0.0,
                   help="used_cars: prices (1 + drift) times higher, older cars keeping value (a moved market)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_simulate)

    home = os.environ.get("ML_PLATFORM_HOME", str(REPO / ".local"))
    u = sub.add_parser("up", help="start Kafka, MLflow, Dagster and the simulator; Ctrl-C stops them")
    u.add_argument("--home", default=home, help="state folder (default: %(default)s)")
    u.add_argument("--jars", default=os.environ.get("ML_PLATFORM_JARS", str(REPO / ".jars")))
    u.add_argument("--kafka-port", type=int, default=int(os.environ.get("ML_PLATFORM_KAFKA_PORT", 9092)),
                   help="broker port; the KRaft controller uses the next one")
    u.add_argument("--mlflow-port", type=int, default=int(os.environ.get("ML_PLATFORM_MLFLOW_PORT", 5000)))
    u.add_argument("--dagster-port", type=int, default=int(os.environ.get("ML_PLATFORM_DAGSTER_PORT", 3000)))
    u.add_argument("--api-port", type=int, default=int(os.environ.get("ML_PLATFORM_API_PORT", 8000)))
    u.add_argument("--store-port", type=int, default=int(os.environ.get("ML_PLATFORM_STORE_PORT", 8001)),
                   help="the prediction store (DynamoDB API)")
    u.add_argument("--datasets", default=os.environ.get("ML_PLATFORM_DATASETS", "used_cars"))
    u.add_argument("--every", type=float, default=float(os.environ.get("ML_PLATFORM_SIM_EVERY", 90)),
                   help="seconds between simulated batches")
    u.add_argument("--rows-per-batch", type=int, default=int(os.environ.get("ML_PLATFORM_SIM_ROWS", 5000)))
    u.add_argument("--sensor-interval", type=int, default=15)
    u.add_argument("--scorer-metrics-port", type=int,
                   default=int(os.environ.get("ML_PLATFORM_SCORER_METRICS_PORT", 8010)),
                   help="the first dataset's scorer's Prometheus port; the next ones count up")
    u.set_defaults(func=lambda a: __import__("ml_platform.local.supervisor", fromlist=["up"]).up(_stack_config(a)))

    st = sub.add_parser("status", help="what make run runs: state, pid, restarts, last exit code of each service")
    st.add_argument("--home", default=home)
    st.set_defaults(func=lambda a: __import__("ml_platform.local.supervisor", fromlist=["status"]).status(
        Path(a.home)))

    d = sub.add_parser("down", help="stop services an interrupted `make run` left running")
    d.add_argument("--home", default=home)
    d.set_defaults(func=lambda a: __import__("ml_platform.local.supervisor", fromlist=["down"]).down(Path(a.home)))

    r = sub.add_parser("rollback", help="point a dataset's `champion` alias back at `previous_champion`")
    r.add_argument("dataset")
    r.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    r.set_defaults(func=_rollback)

    rp = sub.add_parser("reproduce", help="rebuild a registered model version's training set from the silver table as "
                                          "it was (Delta time travel) and retrain with its recorded settings")
    rp.add_argument("dataset")
    rp.add_argument("model_version")
    rp.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    rp.add_argument("--home", default=home)
    rp.add_argument("--data-root", default=os.environ.get("ML_PLATFORM_DATA"),
                    help="the store: a folder, s3://bucket/prefix or hdfs://... (default: <home>/data)")
    rp.add_argument("--jars", default=os.environ.get("ML_PLATFORM_JARS", str(REPO / ".jars")))
    rp.add_argument("--threads", type=int, default=2)
    rp.add_argument("--driver-memory", default="4g")
    rp.add_argument("--tolerance", type=float, default=1e-9, help="largest metric difference that counts as the same")
    rp.set_defaults(func=_reproduce)

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    g = sub.add_parser("produce", help="send the held-out test stream as prediction requests, and actuals later")
    g.add_argument("dataset")
    g.add_argument("--bootstrap", default=bootstrap)
    g.add_argument("--test-dir", help="test-stream CSVs (default: <data>/test_stream/<dataset>)")
    g.add_argument("--rate", type=float, default=20.0, help="requests per second")
    g.add_argument("--count", type=int, help="stop after this many requests (default: the whole stream)")
    g.add_argument("--actual-delay", type=float, default=30.0, help="seconds until a request's true label is sent")
    g.add_argument("--actual-drop", type=float, default=0.1, help="share of true labels never sent")
    g.add_argument("--malformed", type=float, default=0.02, help="share of malformed requests")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--loop", action="store_true", help="start over when the stream ends (fresh request ids)")
    g.add_argument("--max-pending", type=int, default=10000,
                   help="messages not yet acknowledged by the broker before the generator waits")
    g.add_argument("--wait-for-champion", action="store_true")
    g.add_argument("--tracking-uri", default=tracking)
    g.set_defaults(func=_produce)

    t = sub.add_parser("tail", help="follow predictions, DLQ records and live metrics in the terminal")
    t.add_argument("dataset")
    t.add_argument("--bootstrap", default=bootstrap)
    t.add_argument("--metrics-only", action="store_true")
    t.add_argument("--from-beginning", action="store_true")
    t.set_defaults(func=_tail)

    up = sub.add_parser("upload-url", help="a presigned S3 upload for one batch file: one key, a size cap, an expiry")
    up.add_argument("dataset")
    up.add_argument("file_name", help="the name the batch lands under, e.g. batch-2026-11-23.csv")
    up.add_argument("--max-mb", type=float, default=512, help="size cap (default 512 MB)")
    up.add_argument("--expires", type=int, default=3600, help="seconds the URL stays valid (default 3600)")
    up.add_argument("--data-root", default=os.environ.get("ML_PLATFORM_DATA", ""))
    up.add_argument("--s3-endpoint", default=os.environ.get("ML_PLATFORM_S3_ENDPOINT"))
    up.set_defaults(func=_upload_url)

    from ml_platform.data.accounting import STATES

    dagster_url = os.environ.get("ML_PLATFORM_DAGSTER_URL") or \
        f"http://127.0.0.1:{os.environ.get('ML_PLATFORM_DAGSTER_PORT', 3000)}"
    data_help = "the store's root (default: $ML_PLATFORM_DATA, else <home>/data)"
    attempts_help = "failed runs before a batch is `failed` (default: %(default)s, as the new-batch sensor)"
    b = sub.add_parser("batches", help="every landed file of a dataset and its one state: waiting, running, "
                                       "accepted, quarantined, failed or superseded, with why")
    b.add_argument("dataset")
    b.add_argument("--home", default=home, help="state folder (default: %(default)s)")
    b.add_argument("--data-root", default=os.environ.get("ML_PLATFORM_DATA"), help=data_help)
    b.add_argument("--dagster-url", default=dagster_url, help="the Dagster webserver (default: %(default)s)")
    b.add_argument("--state", choices=STATES, help="list only the batches in this state (the summary counts all)")
    b.add_argument("--json", action="store_true", help="the batches and the summary as JSON")
    b.add_argument("--max-attempts", type=int, default=4, help=attempts_help)
    b.set_defaults(func=_batches)

    dr = sub.add_parser("doctor", help="check the local stack: services, Dagster, the new-batch sensor, batches, "
                                       "the scorer, the champion; exit 1 on any FAIL")
    dr.add_argument("--home", default=home, help="state folder (default: %(default)s)")
    dr.add_argument("--data-root", default=os.environ.get("ML_PLATFORM_DATA"), help=data_help)
    dr.add_argument("--dagster-url", default=dagster_url, help="the Dagster webserver (default: %(default)s)")
    dr.add_argument("--tracking-uri", default=tracking)
    dr.add_argument("--datasets", default=os.environ.get("ML_PLATFORM_DATASETS", "used_cars"))
    dr.add_argument("--stuck-minutes", type=float, default=60.0,
                    help="a batch waiting or running longer than this fails the check (default: %(default)s)")
    dr.add_argument("--max-attempts", type=int, default=4, help=attempts_help)
    dr.set_defaults(func=_doctor)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
