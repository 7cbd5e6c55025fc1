"""The serving metrics every front end exposes in Prometheus format, one family set for the Kafka scorer and the
REST API: rows scored by dataset, model version and outcome, the version serving per role, swaps, and the time of
one Spark scoring call (a micro-batch, or a coalesced REST call). Each front end has a registry of its own.

A front end with a main loop that fails and restarts (the Kafka scorer) also reports its state (one
`ml_platform_state` sample per state, 1 for the current one), its restarts, its consecutive failures and the
records that could not be written (dead-lettered or, for shadow predictions, dropped). They have labels, so a
front end that never reports them (the REST API) exposes none of their samples."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram

STATES = ("starting", "waiting", "serving", "failing", "stopped")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServingMetrics:
    def __init__(self, front_end: str):
        self.registry = r = CollectorRegistry()
        self.front_end = front_end
        self._last: dict[tuple[str, str], str | None] = {}
        self.predictions = Counter("ml_platform_predictions", "rows scored, by dataset, model version and outcome "
                                   "(scored, rejected)", ["front_end", "dataset", "model_version", "outcome"],
                                   registry=r)
        self.model_version = Gauge("ml_platform_model_version", "the version serving, by dataset and role",
                                   ["front_end", "dataset", "role"], registry=r)
        self.swaps = Counter("ml_platform_model_swaps", "model swaps taken, by dataset", ["front_end", "dataset"],
                             registry=r)
        self.spark_call = Histogram("ml_platform_spark_call_seconds", "one Spark scoring call: a micro-batch or a "
                                    "coalesced REST call", ["front_end", "dataset"], buckets=BUCKETS, registry=r)
        self.state = Enum("ml_platform_state", "the serving loop's state, by dataset", ["front_end", "dataset"],
                          states=list(STATES), registry=r)
        self.restarts = Counter("ml_platform_restarts", "restarts of a failed serving loop (the scorer's queries, "
                                "from their checkpoints), by dataset", ["front_end", "dataset"], registry=r)
        self.consecutive_failures = Gauge("ml_platform_consecutive_failures", "failures of the serving loop since "
                                          "it last worked, by dataset", ["front_end", "dataset"], registry=r)
        self.write_failed = Counter("ml_platform_write_failed", "output records that could not be written, by "
                                    "dataset and topic kind (predictions and dlq: dead-lettered; shadow: dropped)",
                                    ["front_end", "dataset", "kind"], registry=r)

    def scored(self, dataset: str, version: str, outcome: str, n: int = 1) -> None:
        if n:
            self.predictions.labels(self.front_end, dataset, version, outcome).inc(n)

    def serving(self, dataset: str, role: str, version: str | None) -> None:
        """The version a call or micro-batch used; a champion different from the last one seen is a swap (kept
        here, so a query restarted from its checkpoint does not forget the last version)."""
        last = self._last.get((dataset, role))
        if role == "champion" and None not in (last, version) and last != version:
            self.swaps.labels(self.front_end, dataset).inc()
        self._last[(dataset, role)] = version
        self.model_version.labels(self.front_end, dataset, role).set(float(version) if version else 0.0)

    def call(self, dataset: str, seconds: float) -> None:
        self.spark_call.labels(self.front_end, dataset).observe(seconds)

    def set_state(self, dataset: str, state: str, consecutive_failures: int = 0) -> None:
        self.state.labels(self.front_end, dataset).state(state)
        self.consecutive_failures.labels(self.front_end, dataset).set(consecutive_failures)

    def restarted(self, dataset: str) -> None:
        self.restarts.labels(self.front_end, dataset).inc()

    def unwritten(self, dataset: str, kind: str, n: int) -> None:
        if n:
            self.write_failed.labels(self.front_end, dataset, kind).inc(n)


def serve_http(metrics: ServingMetrics, port: int, host: str = "127.0.0.1"):
    """Expose /metrics on host:port from a background thread (prometheus_client's own server)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=metrics.registry)
