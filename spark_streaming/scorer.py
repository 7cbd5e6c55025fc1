"""The streaming scorer: a plain Spark application (`python -m spark_streaming.scorer used_cars`, or
spark-submit this file). It imports ml_platform only.

Two Structured Streaming queries on one SparkSession, each with its own checkpoint:
  score    <ds>.requests -> parse, validate, clean (bad -> <ds>.dlq) -> champion model -> <ds>.predictions
           (and a challenger: shadow -> <ds>.shadow, or split -> a share of <ds>.predictions)
  metrics  <ds>.predictions + <ds>.shadow + <ds>.actuals -> joined windows per model_version -> <ds>.metrics

It waits (and says so) until a champion exists. A background thread follows the `champion` alias and loads a
new version off the hot path; foreachBatch takes it between micro-batches, so a swap or rollback never restarts
a query. When the spec's serving.challenger.mode is shadow or split, a second watcher follows the `challenger`
alias the same way (removing the alias stops the challenger; pointing it at the champion means none). A failed
query is restarted from its checkpoint (the status file says `failing` until it works again); SIGTERM stops
cleanly. An output record that cannot be written (over the writer's max.request.size or refused by the broker) is
dead-lettered with the reason and the micro-batch goes on (spark_kafka.write_isolating): one record never makes
the scorer replay a micro-batch forever; a broker that does not answer does. Delivery is at least once: a
micro-batch replayed after a crash is written again, so consumers deduplicate by (request_id, model_version).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from ml_platform.serve.kafka_io import ensure_topics
from ml_platform.serve.live import finish, joined_windows, window_rows
from ml_platform.serve.messages import MAX_MESSAGE_BYTES, ContractError, encode, topic
from ml_platform.serve.prom import ServingMetrics, serve_http
from ml_platform.serve.scoring import OUTPUT_UNIT, PlanCache, score_batch, unwritten_messages
from ml_platform.serve.spark_kafka import kafka_source, write_isolating, write_kafka
from ml_platform.serve.status import StatusFile, iso
from ml_platform.serve.watcher import ChampionWatcher, registry_watcher
from ml_platform.spark import local_jars, prepare_environment, s3a_conf, session_conf
from ml_platform.spec import DatasetSpec, load_spec_dir
from ml_platform.train.registry import CHALLENGER


class Status(StatusFile):
    """What the scorer is doing (serve/status.py's JSON file). state: starting -> waiting (no champion yet;
    `updated_at` moves with every poll) -> serving (from the moment a model is taken and the queries start) ->
    stopped; failing while the queries keep failing (`restarts` since start, `consecutive_failures`,
    `last_error`, `last_failure_at`), serving again once a micro-batch is written or every restarted query has
    made progress. `write_failed`: outputs that could not be written and were dead-lettered (or, shadow, dropped).
    With `prom` set, every state change shows in the Prometheus metrics too."""

    def __init__(self, path: Path | None, dataset: str):
        super().__init__(path, dataset, requests=0, predictions=0, dlq=0, batches=0, swaps=[], restarts=0,
                         consecutive_failures=0, last_failure_at=None, write_failed=0)
        self.prom: ServingMetrics | None = None

    def update(self, **kw) -> None:
        with self._lock:
            super().update(**kw)
            if self.prom is not None and "state" in kw:
                self.prom.set_state(self.data["dataset"], kw["state"], self.data.get("consecutive_failures", 0))

    def serving(self, watcher: ChampionWatcher, challenger: ChampionWatcher | None = None, mode: str = "off",
                **kw) -> None:
        """state serving, with the model in use, its swaps as [from, to, ISO time] and the watcher's last error;
        with a challenger watcher, the challenger's version (null: none serving), mode and swaps too."""
        if challenger is not None:
            kw |= {"challenger_version": challenger.current.version if challenger.current else None,
                   "challenger_mode": mode,
                   "challenger_swaps": [[old, new, iso(at)] for old, new, at in challenger.swaps]}
        errors = [e for e in (watcher.last_error, challenger and challenger.last_error) if e]
        self.recovered("serving", model_version=watcher.current.version if watcher.current else None,
                       swaps=[[old, new, iso(at)] for old, new, at in watcher.swaps],
                       last_error=errors[0] if errors else None, **kw)


def log(msg: str) -> None:
    print(f"{datetime.now(UTC).strftime('%H:%M:%S')} scorer: {msg}", flush=True)


def scoring_query(spark, spec: DatasetSpec, watcher: ChampionWatcher, bootstrap: str, checkpoint: str,
                  status: Status, max_per_trigger: int | None = None, trigger_ms: int = 0,
                  model_name: str | None = None, on_batch=None, challenger: ChampionWatcher | None = None,
                  prom: ServingMetrics | None = None, write_limit: int = MAX_MESSAGE_BYTES):
    """`on_batch(batch_id, version, predictions, dlq, seconds)` is called after each micro-batch is written.
    `challenger` (a watcher of the `challenger` alias) serves as the spec's serving.challenger says. `prom`
    counts each micro-batch in the serving metrics the REST API exposes too. `write_limit` is the writer's
    max.request.size (the contract's limit; tests make it tiny to force a record that cannot be written)."""
    name = model_name or spec.name
    mode = spec.serving.challenger.mode
    plans = PlanCache(log)  # the micro-batch's frame built once per serving state, not per micro-batch

    def each(batch, batch_id: int) -> None:
        t0 = time.perf_counter()
        loaded = watcher.take()  # the one model for this whole micro-batch, and at most one challenger
        ch = challenger.take() if challenger is not None else None
        key = (loaded.version, id(loaded.model), ch and ch.version, ch and id(ch.model), mode)
        out, cached = plans.frame(batch, key, lambda: score_batch(
            batch, spec, loaded.model, name, loaded.version, spec.serving.max_request_bytes, challenger=ch, mode=mode,
            keep_source=True))
        try:
            # the broker answering is checked with the scorer's own topic check: it raises when nobody answers
            written = write_isolating(out, bootstrap, OUTPUT_UNIT, lambda: ensure_topics(bootstrap, spec.name),
                                      write_limit, [topic(spec, t) for t in ("predictions", "dlq", "shadow")])
            if written.failed:  # each becomes its request's DLQ record; if even that fails, the batch fails
                write_kafka(unwritten_messages(out, written.failed, spec), bootstrap, write_limit)
        finally:
            for df in cached:
                df.unpersist()
        counts, lost = written.rows, Counter(u[0] for u, _ in written.failed)
        p, d = counts.get(topic(spec, "predictions"), 0), counts.get(topic(spec, "dlq"), 0)
        p -= lost[topic(spec, "predictions")]
        d += lost[topic(spec, "predictions")]
        sh = counts.get(topic(spec, "shadow"), 0) - lost[topic(spec, "shadow")]
        if written.failed:
            log(f"error: {len(written.failed)} record(s) of micro-batch {batch_id} not written, dead-lettered "
                f"(shadow: dropped); first: {written.failed[0][1]}")
        status.add(requests=p + d, predictions=p, dlq=d, shadow=sh, batches=1, write_failed=len(written.failed))
        # frames built and reused: a build per serving state, not per micro-batch (scoring.PlanCache)
        status.serving(watcher, challenger, mode, last_batch_id=batch_id,
                       plan_frames={"built": plans.builds, "reused": plans.reused})
        if prom is not None:
            for t, n in lost.items():
                prom.unwritten(spec.name, t.rsplit(".", 1)[-1], n)
            prom.serving(spec.name, "champion", loaded.version)
            prom.scored(spec.name, loaded.version, "scored", p)  # split: the challenger's share is counted here too
            prom.scored(spec.name, "none", "rejected", d)
            prom.call(spec.name, time.perf_counter() - t0)
        if on_batch:
            on_batch(batch_id, loaded.version, p, d, time.perf_counter() - t0)

    w = (kafka_source(spark, bootstrap, topic(spec, "requests"), max_per_trigger).writeStream
         .queryName(f"{spec.name}_score").option("checkpointLocation", checkpoint).foreachBatch(each))
    if trigger_ms:
        w = w.trigger(processingTime=f"{trigger_ms} milliseconds")
    return w.start()


def metrics_query(spark, spec: DatasetSpec, bootstrap: str, checkpoint: str, status: Status):
    out_topic = topic(spec, "metrics")

    def each(batch, batch_id: int) -> None:
        rows, msgs = [], []
        for m in (finish(spec, r) for r in window_rows(batch)):
            try:  # a window that breaks the contract is reported, never written, and never stops the query
                rows.append((out_topic, f"{m['window_start']}/{m['model_version']}", encode("metrics", m).decode()))
                msgs.append(m)
            except (ContractError, ValueError) as e:
                status.update(last_error=f"metrics window not written: {e}")
                log(f"error: metrics window not written: {e}")
        if not rows:
            return
        write_kafka(spark.createDataFrame(rows, "topic string, key string, value string"), bootstrap)
        status.update(last_metrics=msgs[-1])

    agg = joined_windows(kafka_source(spark, bootstrap, topic(spec, "predictions"), None),
                         kafka_source(spark, bootstrap, topic(spec, "actuals"), None), spec,
                         shadow=kafka_source(spark, bootstrap, topic(spec, "shadow"), None))
    return (agg.writeStream.queryName(f"{spec.name}_metrics").outputMode("append")
            .option("checkpointLocation", checkpoint).foreachBatch(each).start())


SPARK_CONF = "ML_PLATFORM_SPARK_CONF"


def spark_conf_from_env() -> dict[str, str]:
    """Spark settings from ML_PLATFORM_SPARK_CONF, one `key=value` a line (Spark on Kubernetes: the image, the
    namespace, the executors); a line that is not one names itself."""
    conf = {}
    for n, line in enumerate(os.environ.get(SPARK_CONF, "").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise SystemExit(f"{SPARK_CONF} line {n}: not spark.key=value: {line[:80]!r}")
        conf[key.strip()] = value.strip()
    return conf


def build_session(dataset: str, master: str, jars_dir: str | None, s3a: bool = False):
    """The scorer's session: `s3a` adds hadoop-aws and the s3a settings (checkpoints on S3; credentials from the
    default chain: the environment, an instance or pod role)."""
    from pyspark.sql import SparkSession

    prepare_environment()
    jars = local_jars(jars_dir, ("spark", "aws") if s3a else ("spark",))
    if not jars:
        raise SystemExit(f"no Spark Kafka connector jars under {jars_dir}/spark: run `make jars`")
    extra = s3a_conf(os.environ.get("ML_PLATFORM_S3_ENDPOINT"), os.environ.get("AWS_REGION")) if s3a else {}
    extra |= spark_conf_from_env()
    builder = SparkSession.builder
    for k, v in session_conf(master, f"scorer-{dataset}", jars, shuffle_partitions=2, driver_memory="2g",
                             extra=extra).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def serve(spark, spec: DatasetSpec, watcher: ChampionWatcher, bootstrap: str, state: Path, status: Status,
          stop: threading.Event, max_per_trigger: int | None = 20000, trigger_ms: int = 0, metrics: bool = True,
          describe: str = "a champion", heartbeat_seconds: float = 10.0,
          challenger: ChampionWatcher | None = None, prom: ServingMetrics | None = None,
          checkpoints: str | None = None) -> None:
    """Wait for a champion, then run the queries until `stop`; a failed query restarts from its checkpoint. A
    challenger watcher is not waited for: it serves from the micro-batch after it has loaded a model. While the
    queries keep failing the status says `failing` (and counts the restarts); it says `serving` again once a
    micro-batch is written or every restarted query has made progress (an idle stream writes no micro-batch)."""
    mode = spec.serving.challenger.mode
    # <state>/checkpoints/<dataset>, or under a URI every executor reaches (a cluster over several hosts:
    # hdfs://, s3a://); the driver alone writes the scoring query's, the executors the metrics query's state
    if checkpoints and "://" in checkpoints:
        root = f"{checkpoints.rstrip('/')}/{spec.name}"
    else:
        local = Path(checkpoints or state / "checkpoints") / spec.name
        local.mkdir(parents=True, exist_ok=True)
        root = str(local)
    if prom is not None:
        status.prom = prom
    status.update(state="waiting")
    if not watcher.wait_first(stop, describe=describe, heartbeat=lambda: status.update(state="waiting")):
        return
    watcher.take()
    watcher.start()
    if challenger is not None:
        challenger.check()
        challenger.take()
        challenger.start()
    log(f"serving {spec.name} with model version {watcher.current.version}; requests from "
        f"{topic(spec, 'requests')} at {bootstrap}")
    failed = False
    while not stop.is_set():
        queries = []
        if failed:  # the metric first: a reader that sees the status file's count finds the metric counted too
            if prom is not None:
                prom.restarted(spec.name)
            status.add(restarts=1)
        try:
            # the scorer owns its dataset's topics: a subscribed topic that does not exist fails the query at once,
            # and a user's dataset has no load generator to create them (seen: a restart loop every 5 s, with
            # StackOverflowErrors in Spark's stream threads as queries were stopped mid-start)
            ensure_topics(bootstrap, spec.name)
            queries.append(scoring_query(spark, spec, watcher, bootstrap, f"{root}/score", status,
                                         max_per_trigger, trigger_ms, challenger=challenger, prom=prom))
            if metrics and spec.target is not None:  # clustering has no actuals to judge by
                # not "metrics": that checkpoint's state deduplicated by request_id alone and read no shadow topic,
                # and Spark refuses a changed state schema or source list on restart
                queries.append(metrics_query(spark, spec, bootstrap, f"{root}/metrics_by_version",
                                             status))
            if not failed:
                status.serving(watcher, challenger, mode)  # serving from now on, not from the first micro-batch
            beat = time.monotonic()
            while not stop.is_set() and all(q.isActive for q in queries):
                stop.wait(1.0)
                if status.data["state"] == "failing":
                    # a query that reported progress has read its sources; until then, a restart is not a recovery
                    if all(q.lastProgress is not None for q in queries):
                        status.serving(watcher, challenger, mode)
                    elif time.monotonic() - beat > heartbeat_seconds:
                        status.update()
                        beat = time.monotonic()
                elif time.monotonic() - beat > heartbeat_seconds:  # idle traffic still shows a live scorer
                    status.serving(watcher, challenger, mode)
                    beat = time.monotonic()
            for q in queries:
                if q.exception() is not None:
                    raise RuntimeError(f"query {q.name} failed: {str(q.exception())[:2000]}")
            failed = False
        except Exception as e:  # a broker down, a write that failed: restart from the checkpoints, keep the model
            failed = True
            status.failing(e)
            log(f"error: {e}; restarting the queries from their checkpoints in 5s "
                f"({status.data['consecutive_failures']} failure(s) in a row)")
        finally:
            for q in queries:
                try:
                    q.stop()
                except Exception:  # already stopped with an error
                    pass
        stop.wait(5.0)
    watcher.stop()
    if challenger is not None:
        challenger.stop()
    status.update(state="stopped")
    log("stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scorer", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    ap.add_argument("--state", default=os.environ.get("ML_PLATFORM_HOME", ".local"),
                    help="checkpoints go to <state>/checkpoints/<dataset>/, the status file to <state>/")
    ap.add_argument("--jars", default=os.environ.get("ML_PLATFORM_JARS", ".jars"))
    ap.add_argument("--specs", default=os.environ.get("ML_PLATFORM_SPECS"),
                    help="spec directory (default: $ML_PLATFORM_SPECS, else the shipped examples)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--max-per-trigger", type=int, default=20000)
    ap.add_argument("--trigger-ms", type=int, default=0, help="0: start the next micro-batch as soon as possible")
    ap.add_argument("--no-metrics", action="store_true", help="run the scoring query only")
    ap.add_argument("--metrics-port", type=int, default=int(os.environ.get("ML_PLATFORM_SCORER_METRICS_PORT", 0)),
                    help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: off)")
    ap.add_argument("--metrics-host", default=os.environ.get("ML_PLATFORM_BIND", "127.0.0.1"),
                    help="the address of --metrics-port (default $ML_PLATFORM_BIND, else 127.0.0.1)")
    ap.add_argument("--checkpoints", default=os.environ.get("ML_PLATFORM_CHECKPOINTS"),
                    help="checkpoint root instead of <state>/checkpoints: a folder, or a URI all of a cluster's "
                         "hosts reach (hdfs://, s3a://); each dataset gets <root>/<dataset>")
    a = ap.parse_args(argv)
    loaded = load_spec_dir(a.specs)
    if a.dataset not in loaded.specs:
        broken = "".join(f"\n  {f}: {e}" for f, e in loaded.errors.items())
        raise SystemExit(f"no spec for dataset {a.dataset!r} in {loaded.directory} (have {sorted(loaded.specs)})"
                         + broken)
    spec = loaded.specs[a.dataset]
    state = Path(a.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    status = Status(state / f"scorer-{spec.name}.json", spec.name)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    spark = build_session(spec.name, a.master, a.jars, s3a=(a.checkpoints or "").startswith("s3a://"))
    watcher = registry_watcher(spec.name, a.tracking_uri, spec.serving.poll_seconds, logger=log,
                               on_error=lambda msg: status.update(last_error=msg))
    challenger = None
    if spec.serving.challenger.mode != "off":
        challenger = registry_watcher(spec.name, a.tracking_uri, spec.serving.poll_seconds, logger=log,
                                      on_error=lambda msg: status.update(last_error=msg), alias=CHALLENGER)
    prom = ServingMetrics("kafka")
    if a.metrics_port:
        serve_http(prom, a.metrics_port, a.metrics_host)
        log(f"Prometheus metrics on http://{a.metrics_host}:{a.metrics_port}/metrics")
    serve(spark, spec, watcher, a.bootstrap, state, status, stop, a.max_per_trigger, a.trigger_ms,
          not a.no_metrics, f"a champion (models:/{spec.name}@champion at {a.tracking_uri})", challenger=challenger,
          prom=prom, checkpoints=a.checkpoints)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
