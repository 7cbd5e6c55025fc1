"""API keys, limits and the rate limit. Keys are compared by SHA-256 hash (only hashes are held); a failed key is
never logged, echoed or counted by value. Bodies over the limit are refused before they are read whole."""

from __future__ import annotations

import hmac
import json
import threading
import time

from fastapi import HTTPException, Request
from fastapi.security import APIKeyHeader

from api.settings import key_hash

HEADER = "X-API-Key"
api_key_header = APIKeyHeader(name=HEADER, auto_error=False, description="An API key (ML_PLATFORM_API_KEYS)")


class RateLimiter:
    """A token bucket per key hash: `per_minute` requests, refilled continuously, bursts up to a minute's worth."""

    def __init__(self, per_minute: int):
        self.rate, self.capacity = per_minute / 60.0, float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, who: str) -> tuple[bool, float]:
        """(allowed, seconds until a request would be)."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(who, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return True, 0.0
            self._buckets[who] = (tokens, now)
            return False, (1 - tokens) / self.rate


def authorized(request: Request) -> str:
    """The dependency on every endpoint but /health (and /ready without a key, which answers its status alone):
    401 without a known key (the X-API-Key header, or the web app's session cookie), 403 for a cookie-authenticated
    change without the session's CSRF token, 429 over the key's rate. Returns the key's hash (a caller identity for
    metrics and logs that reveals nothing of the key)."""
    platform = request.app.state.platform
    given = request.headers.get(HEADER)
    h = known_key(given, platform.settings.key_hashes) if given else _session_key(request)
    if not h:
        platform.metrics.auth_failures.inc()
        raise HTTPException(401, "missing or unknown API key (header X-API-Key)",
                            headers={"WWW-Authenticate": "ApiKey"})
    ok, wait = platform.limiter.allow(h)
    if not ok:
        platform.metrics.rate_limited.inc()
        raise HTTPException(429, f"rate limit of {platform.settings.rate_per_minute} requests a minute per key",
                            headers={"Retry-After": str(max(1, round(wait)))})
    return h[:12]


def known_key(key: str, key_hashes: frozenset[str]) -> str:
    """The hash of `key` when it is an accepted key, else '' (compared in constant time)."""
    h = key_hash(key) if key else ""
    return h if h and any(hmac.compare_digest(h, k) for k in key_hashes) else ""


def _session_key(request: Request) -> str:
    """The key hash of the web app's session cookie ('' without a live one); a change (not GET/HEAD) must carry
    the session's CSRF token, or it is refused."""
    from api.web.session import COOKIE, CSRF_HEADER, csrf_ok

    sessions = getattr(request.app.state, "sessions", None)
    session = sessions.get(request.cookies.get(COOKIE), request.app.state.platform.settings.key_hashes) \
        if sessions else None
    if session is None:
        return ""
    if request.method not in ("GET", "HEAD") and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, f"a change made with the web app's session cookie needs its {CSRF_HEADER} header "
                                 f"(reload the page)")
    return session.key_hash


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes` (by Content-Length, or counted while streaming), except
    on the upload paths, which stream to storage under their own (larger) limit."""

    def __init__(self, app, max_bytes: int, exempt: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or any(p in scope["path"] for p in self.exempt):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(send, self.max_bytes)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body over the limit of {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
