"""Persistent state: captured exchanges, keys, students, routing. `open_store(url)` returns the backend for a URL:
`sqlite:///path.db` (one gateway process) or `postgresql://user@host/db` (replicas sharing one store)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import StoreError
from gateway.store.base import (
    ApiKeyRecord,
    ConfidenceMethod,
    Exchange,
    ExchangeGroup,
    ExchangeStatus,
    Feedback,
    FeedbackSource,
    RampState,
    RolloutRamp,
    Store,
    StoredResponse,
    StudentStatus,
    StudentVersion,
    TaskSummary,
    redacted_url,
    user_hash,
)
from gateway.store.records import (
    NO_EXTRA,
    ExchangeExtra,
    GateResult,
    RampEvent,
    RampPlan,
    ServingPrice,
    ShadowNote,
    StudentDetails,
    StudentNote,
)

__all__ = ["NO_EXTRA", "STORE_SCHEMES", "ApiKeyRecord", "ConfidenceMethod", "Exchange", "ExchangeExtra",
           "ExchangeGroup", "ExchangeStatus", "Feedback", "FeedbackSource", "GateResult", "RampEvent", "RampPlan",
           "RampState", "RolloutRamp", "ServingPrice", "ShadowNote", "Store", "StoreError", "StoredResponse",
           "StudentDetails", "StudentNote", "StudentStatus", "StudentVersion", "TaskSummary", "check_store_url",
           "open_store", "redacted_url", "user_hash"]

StoreFactory = Callable[[str], Store]


def _sqlite(url: str) -> Store:
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(url)


def _postgres(url: str) -> Store:
    from gateway.store.postgres import PostgresStore

    return PostgresStore(url)


# URL prefix → its backend. The one list, read by the settings check and by open_store; each backend (and its
# driver) is imported only when a store of its kind is opened, so loading settings imports neither.
STORE_SCHEMES: dict[str, StoreFactory] = {
    "sqlite:///": _sqlite,
    "postgresql://": _postgres,
    "postgres://": _postgres,
}


def check_store_url(url: str) -> StoreFactory:
    """The backend that serves `url`; StoreError when none does."""
    for prefix, factory in STORE_SCHEMES.items():
        if url.startswith(prefix):
            return factory
    raise StoreError(f"unsupported store URL scheme {url.split(':', 1)[0]!r}: the URL must start with one of "
                     f"{', '.join(STORE_SCHEMES)}")


def open_store(url: str) -> Store:
    """The store for `url` (not yet opened: call `await store.open()`)."""
    return check_store_url(url)(url)
