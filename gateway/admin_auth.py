"""Who may use the private surfaces: the admin API, the console, /metrics and the full OpenAPI schema.
The admin-token checks live here and nowhere else, with the console's sessions and sign-in throttle.

- The admin token is compared in constant time; without one configured, every private surface is off
  (403), except /metrics on a separate admin port (`admin_port`: a socket the operator keeps private).
- A console sign-in creates a random 256-bit session id. The browser keeps it in a cookie; the store keeps
  only its sha256 and expiry, so every worker and replica knows the session, and signing out ends it
  everywhere. The CSRF token of a session is an HMAC of its id under the admin token.
- Failed sign-ins are throttled per client (429 with Retry-After after `max_failures` in `window_s`), every
  failure costs the same (the comparison always runs), and refusals are logged as one line a minute.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.auth import bearer_token
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.store import Store

log = logging.getLogger("protege.admin")

SESSION_TTL_S = 8 * 3600.0


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def require_admin(token: str | None, authorization: str | None, *, surface: str = "the admin API") -> None:
    """Raise unless `authorization` carries the admin token."""
    if token is None:
        raise PermissionDeniedError(f"{surface} is disabled: start the gateway with --admin-token",
                                    code="admin_disabled")
    presented = bearer_token(authorization)
    if presented is None:
        raise AuthenticationError("missing admin token: send 'Authorization: Bearer <admin token>'",
                                  code="missing_admin_token")
    if not same(presented, token):
        raise PermissionDeniedError("invalid admin token", code="invalid_admin_token")


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(admin_token: str, session_id: str) -> str:
    return hmac.new(admin_token.encode(), f"protege-console:csrf:{session_id}".encode(), hashlib.sha256).hexdigest()


async def start_session(store: Store, *, ttl_s: float = SESSION_TTL_S) -> str:
    session_id = secrets.token_urlsafe(32)
    now = time.time()
    await store.add_console_session(_hash(session_id), now, now + ttl_s)
    return session_id


async def session_is_valid(store: Store, session_id: str) -> bool:
    if not session_id or len(session_id) > 128:
        return False
    expires_at = await store.console_session_expiry(_hash(session_id))
    return expires_at is not None and expires_at > time.time()


async def end_session(store: Store, session_id: str) -> None:
    await store.delete_console_session(_hash(session_id))


@dataclass
class SignInThrottle:
    """Failed console sign-ins per client: at most `max_failures` in any `window_s`."""

    max_failures: int = 10
    window_s: float = 300.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _refused_since_log: int = 0
    _clients_since_log: set[str] = field(default_factory=set)
    _logged_at: float = 0.0

    def retry_after(self, client: str, now: float | None = None) -> float | None:
        """Seconds until this client may try again; None when it may try now."""
        now = time.monotonic() if now is None else now
        recent = self._recent(client, now)
        if len(recent) < self.max_failures:
            return None
        return max(1.0, recent[0] + self.window_s - now)

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent(client, now).append(now)
        self._refused_since_log += 1
        self._clients_since_log.add(client)
        if now - self._logged_at >= 60:
            log.warning("console: refused %d sign-in(s) from %d client(s) in the last minute",
                        self._refused_since_log, len(self._clients_since_log))
            self._logged_at, self._refused_since_log = now, 0
            self._clients_since_log = set()

    def _recent(self, client: str, now: float) -> deque[float]:
        if len(self._failures) > 10_000:  # many clients: forget the ones whose window has passed
            for key in [k for k, v in self._failures.items() if not v or v[-1] < now - self.window_s]:
                del self._failures[key]
        recent = self._failures.setdefault(client, deque())
        while recent and recent[0] < now - self.window_s:
            recent.popleft()
        return recent
