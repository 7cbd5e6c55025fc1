"""The web app's login: a page takes an API key (the same keys as the REST API), checks it as the API does, and
keeps a random session token in a cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
sends it), and Secure when the app is served over TLS. The key itself is never stored, logged or put in the cookie.

Sessions live in this process's memory: a restart of the API logs everyone out, which is the price of holding no
secret on disk. A request authenticated by cookie that changes something (any method but GET/HEAD) must also
carry the session's CSRF token in the X-CSRF-Token header; the pages put it in a meta tag for their scripts."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "mlp_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_SECONDS = 8 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    key_hash: str
    csrf: str
    seen: float


class Sessions:
    def __init__(self, idle_seconds: float = IDLE_SECONDS):
        self.idle = idle_seconds
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, key_hash: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._by_token) >= MAX_SESSIONS:  # the stalest go first
                for t, _ in sorted(self._by_token.items(), key=lambda kv: kv[1].seen)[:MAX_SESSIONS // 10]:
                    del self._by_token[t]
            self._by_token[token] = Session(key_hash, secrets.token_urlsafe(24), time.monotonic())
        return token

    def get(self, token: str | None, key_hashes: frozenset[str]) -> Session | None:
        """The live session of `token`, or None (unknown, idle too long, or its key no longer accepted)."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._by_token.get(token)
            if s is None:
                return None
            if now - s.seen > self.idle or s.key_hash not in key_hashes:
                del self._by_token[token]
                return None
            s.seen = now
            return s

    def close(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


def csrf_ok(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf, given)


def cookie_args(secure: bool) -> dict:
    return {"key": COOKIE, "httponly": True, "samesite": "strict", "secure": secure, "path": "/",
            "max_age": IDLE_SECONDS}
