"""The serving metrics every front end exposes in Prometheus format, one family set for the Kafka scorer and the
REST API: rows scored by dataset, model version and outcome, the version serving per role, swaps, and the time of
one Spark scoring call (a micro-batch, or a coalesced REST call). Each front end has a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


def serve_http(metrics: ServingMetrics, port: int, host: str = "127.0.0.1"):
    """Expose /metrics on host:port from a background thread (prometheus_client's own server)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host, registry=metrics.registry)
