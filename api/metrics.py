"""The API's Prometheus metrics: the serving families every front end shares (ml_platform.serve.prom, labelled
front_end="rest") and the HTTP ones of its own."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from ml_platform.serve.prom import BUCKETS, ServingMetrics


class ApiMetrics(ServingMetrics):
    def __init__(self):
        super().__init__("rest")
        r = self.registry
        self.requests = Counter("ml_platform_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("ml_platform_http_request_seconds", "HTTP request latency by route",
                                 ["method", "route"], buckets=BUCKETS, registry=r)
        self.publish_errors = Counter("ml_platform_publish_errors", "predictions not written to the prediction log",
                                      ["dataset"], registry=r)
        self.auth_failures = Counter("ml_platform_auth_failures", "requests refused for a missing or unknown key",
                                     registry=r)
        self.rate_limited = Counter("ml_platform_rate_limited", "requests refused by the rate limit", registry=r)
        self.errors = Counter("ml_platform_http_errors", "unhandled errors answered with 500, by route", ["route"],
                              registry=r)
