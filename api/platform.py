"""The API's running parts. One warm SparkSession for the process; per dataset a DatasetServer: the champion (and
challenger) watchers of ml_platform.serve.watcher, and a Coalescer that scores queued calls together through
ml_platform.serve.online (the Kafka scorer's score_batch). The Kafka producer writes each prediction to
`<ds>.predictions`, the prediction log the store writer and live metrics follow.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from api.metrics import ApiMetrics
from api.settings import ApiSettings
from ml_platform.serve.online import Coalescer, Outcome, encode_rows, score_messages
from ml_platform.spec import DatasetSpec, load_spec_dir

log = logging.getLogger("ml_platform.api")


def say(msg: str) -> None:
    log.warning(msg) if msg.startswith("error") else log.info(msg)
    print(f"{datetime.now(UTC).strftime('%H:%M:%S')} api: {msg}", flush=True)


class DatasetServer:
    """One dataset's serving: the models it follows and the coalesced Spark calls that score its rows."""

    def __init__(self, platform: Platform, spec: DatasetSpec, champion, challenger=None):
        self.platform, self.spec, self.champion, self.challenger = platform, spec, champion, challenger
        self.coalescer = Coalescer(self._run, name=f"coalescer-{spec.name}")
        self._medians: tuple[str | None, dict[str, float]] = (None, {})

    def _run(self, messages: list[bytes]) -> Outcome:
        """One Spark call: one champion version (taken here, between calls, as the scorer does between
        micro-batches) for every row of it."""
        from ml_platform.serve.scoring import score_batch

        loaded = self.champion.take()
        if loaded is None:
            raise NotReady(f"{self.spec.name}: no champion loaded yet")
        challenger = self.challenger.take() if self.challenger is not None else None
        m = self.platform.metrics
        m.serving(self.spec.name, "champion", loaded.version)
        if self.challenger is not None:
            m.serving(self.spec.name, "challenger", challenger.version if challenger else None)
        t0 = time.perf_counter()
        outcome = score_messages(self.platform.spark, self.spec, messages, lambda df: score_batch(
            df, self.spec, loaded.model, self.spec.name, loaded.version, self.spec.serving.max_request_bytes,
            challenger=challenger))
        m.call(self.spec.name, time.perf_counter() - t0)
        return outcome

    def predict(self, rows: list[dict]) -> Outcome:
        """Blocking: queue the rows, wait for their Spark call, count and publish them."""
        outcome = self.submit(rows).result(self.platform.settings.wait_seconds)
        self.finish(outcome)
        return outcome

    def submit(self, rows: list[dict]):
        """Queue the rows for the next Spark call; a concurrent.futures.Future of their Outcome."""
        return self.coalescer.submit_future(encode_rows(rows))

    def finish(self, outcome: Outcome) -> None:
        """After a call: the metrics, and the predictions to the prediction log."""
        for s in outcome.rows:
            version = (s.prediction or {}).get("model_version", "none")
            self.platform.metrics.scored(self.spec.name, version, "scored" if s.prediction else "rejected")
        self.platform.publish(self.spec.name, outcome.published)
        return outcome

    def medians(self) -> dict[str, float]:
        """The champion's training medians (explanations' baselines), read once per loaded version."""
        from ml_platform.serve.explain import training_medians

        cur = self.champion.current
        if cur is None:
            return {}
        if self._medians[0] != cur.version:
            self._medians = (cur.version, training_medians(cur.model))
        return self._medians[1]

    def readiness(self) -> dict:
        """ready: a champion is loaded and the alias's newest version did not fail to load (while it fails, the
        loaded one keeps serving, and /ready says so)."""
        cur = self.champion.current
        failed = self.champion.failing
        out = {"ready": cur is not None and not failed, "model_version": cur.version if cur else None}
        if failed:
            out["error"] = self.champion.last_error
        elif cur is None:
            out["error"] = self.champion.last_error or "no champion loaded yet"
        return out

    def stop(self) -> None:
        self.coalescer.stop()
        self.champion.stop()
        if self.challenger is not None:
            self.challenger.stop()


class NotReady(RuntimeError):
    pass


class Platform:
    """Everything the routes use, built from ApiSettings. `spark`, `watcher_for` and `store` can be given (tests
    share one SparkSession; a test points a watcher at its own registry)."""

    def __init__(self, settings: ApiSettings, spark=None, watcher_for=None, store=None, producer=None,
                 specs: dict[str, DatasetSpec] | None = None, challenger_for=None):
        from api.guard import RateLimiter

        self.settings = settings
        self.metrics = ApiMetrics()
        self.limiter = RateLimiter(settings.rate_per_minute)
        if specs is None:
            loaded = load_spec_dir(settings.specs_dir)
            wanted = settings.datasets or tuple(loaded.specs)
            self.specs = {d: loaded.specs[d] for d in wanted if d in loaded.specs}
            self.spec_errors = dict(loaded.errors) | {d: f"no spec named {d!r} in {loaded.directory}"
                                                      for d in wanted if d not in loaded.specs}
        else:
            self.specs, self.spec_errors = dict(specs), {}
        self._spark, self._watcher_for, self._store, self._producer = spark, watcher_for, store, producer
        self._challenger_for = challenger_for
        self._producer_failed_at = float("-inf")
        self.servers: dict[str, DatasetServer] = {}
        self.started_at = time.time()
        self._lock = threading.Lock()

    # ---- lifecycle
    def start(self) -> None:
        for spec in list(self.specs.values()):
            self.serve(spec)

    def serve(self, spec: DatasetSpec) -> None:
        """Serve a dataset: at start, and for one created while the API runs (the web app's new-dataset page)."""
        name = spec.name
        watcher = self._watcher(spec, "champion")
        # a challenger is followed only where the spec serves one (shadow or split)
        challenger = self._watcher(spec, "challenger") if spec.serving.challenger.mode != "off" else None
        self.specs[name] = spec
        self.servers[name] = DatasetServer(self, spec, watcher, challenger)
        # the first load off the request path; then the watchers follow their aliases every poll_seconds
        for w in (watcher, challenger):
            if w is not None:
                threading.Thread(target=self._first_load, args=(w,), daemon=True, name=f"load-{name}").start()

    def _first_load(self, watcher) -> None:
        if watcher.check():
            watcher.take()
        watcher.start()

    def _watcher(self, spec: DatasetSpec, alias: str):
        """The registry's watcher of an alias; a test's own (`watcher_for(spec)` for the champion,
        `challenger_for(spec)` for the challenger) when given."""
        given = self._watcher_for if alias == "champion" else self._challenger_for
        if given is not None:
            return given(spec)
        if self._watcher_for is not None:  # a test that gives the champion's watcher and no challenger's
            return None
        from ml_platform.serve.watcher import registry_watcher

        self.spark  # noqa: B018 - mlflow.spark.load_model needs the session before the first load
        return registry_watcher(spec.name, self.settings.tracking_uri, spec.serving.poll_seconds, logger=say,
                                alias=alias)

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()
        if self._producer is not None:
            try:
                self._producer.flush(5)
                self._producer.close(5)
            except Exception:  # the broker is gone: nothing left to flush to
                pass

    # ---- shared clients, created on first use
    @property
    def spark(self):
        with self._lock:
            if self._spark is None:
                from pyspark.sql import SparkSession

                from ml_platform.spark import local_jars, prepare_environment, session_conf

                prepare_environment()
                jars = local_jars(self.settings.jars_dir, ("spark", "aws") if self.settings.data_root.startswith("s3")
                                  else ("spark",))
                builder = SparkSession.builder
                conf = session_conf(self.settings.master, "ml-platform-api", jars, shuffle_partitions=1,
                                    driver_memory="2g")
                for k, v in conf.items():
                    builder = builder.config(k, v)
                self._spark = builder.getOrCreate()
                self._spark.sparkContext.setLogLevel("ERROR")
            return self._spark

    @property
    def store(self):
        """The prediction store (DynamoDB API)."""
        with self._lock:
            if self._store is None:
                from ml_platform.serve.store import PredictionStore

                s = self.settings
                store = PredictionStore(s.store_table, endpoint_url=s.store_endpoint, region=s.region)
                # the table may not exist yet when no writer has run (it describes first: no CreateTable needed
                # where the table exists, as in production)
                store.ensure_table()
                self._store = store
            return self._store

    def tracker(self):
        from ml_platform.train.registry import Tracker

        return Tracker(self.settings.tracking_uri)

    def data_store(self):
        from ml_platform.stores import open_store

        s = self.settings
        options = {"endpoint_url": s.s3_endpoint, "region": s.region} if s.data_root.startswith("s3") else {}
        return open_store(s.data_root, **options)

    def publish(self, dataset: str, messages: list[tuple[str, str, str]]) -> None:
        """The prediction log: asynchronous, never in the caller's way; a failed send is counted, not raised."""
        if not messages or not self.settings.publish:
            return
        try:
            producer = self._get_producer()
            for t, key, value in messages:
                producer.send(t, key=key.encode(), value=value.encode()).add_errback(
                    lambda e, d=dataset: self._publish_failed(d, e))
        except Exception as e:
            self._publish_failed(dataset, e)

    def _publish_failed(self, dataset: str, e: Exception) -> None:
        self.metrics.publish_errors.labels(dataset).inc()
        say(f"error: prediction log write failed for {dataset}: {type(e).__name__}: {str(e)[:300]}")

    def _get_producer(self):
        with self._lock:
            if self._producer is None:
                # with the broker down, creating a producer costs max_block_ms per try: try again at most every 30 s
                if time.monotonic() - self._producer_failed_at < 30:
                    raise ConnectionError(f"Kafka at {self.settings.bootstrap} was unreachable less than 30 s ago")
                from kafka import KafkaProducer

                from ml_platform.serve.messages import MAX_MESSAGE_BYTES

                # max_block_ms: with the broker down, send() must fail fast, not hold a predict call for a minute
                try:
                    self._producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap, linger_ms=5, acks="all",
                                                   retries=10, max_block_ms=2000, max_request_size=MAX_MESSAGE_BYTES)
                except Exception:
                    self._producer_failed_at = time.monotonic()
                    raise
            return self._producer
