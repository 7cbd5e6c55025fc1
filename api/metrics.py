"""The API's Prometheus metrics, on a registry of its own (two apps in one process, as in tests, don't clash).
Names follow Prometheus conventions; the scorer exposes the same family names with its own `front_end` label."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ApiMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("ml_platform_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("ml_platform_http_request_seconds", "HTTP request latency by route",
                                 ["method", "route"], buckets=BUCKETS, registry=r)
        self.predictions = Counter("ml_platform_predictions", "rows scored, by dataset, model version and outcome",
                                   ["dataset", "model_version", "outcome"], registry=r)
        self.model_version = Gauge("ml_platform_model_version", "the version serving, by dataset and role",
                                   ["dataset", "role"], registry=r)
        self.swaps = Counter("ml_platform_model_swaps", "model swaps taken, by dataset", ["dataset"], registry=r)
        self.spark_call = Histogram("ml_platform_spark_call_seconds", "one coalesced Spark scoring call",
                                    ["dataset"], buckets=BUCKETS, registry=r)
        self.publish_errors = Counter("ml_platform_publish_errors", "predictions not written to the prediction log",
                                      ["dataset"], registry=r)
        self.auth_failures = Counter("ml_platform_auth_failures", "requests refused for a missing or unknown key",
                                     registry=r)
        self.rate_limited = Counter("ml_platform_rate_limited", "requests refused by the rate limit", registry=r)
        self.errors = Counter("ml_platform_http_errors", "unhandled errors answered with 500, by route", ["route"],
                              registry=r)
