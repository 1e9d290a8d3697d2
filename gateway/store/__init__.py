"""Persistent state: captured exchanges, keys. `open_store(url)` returns the backend for a URL."""

from __future__ import annotations

from gateway.store.base import (
    ApiKeyRecord,
    ConfidenceMethod,
    Exchange,
    ExchangeStatus,
    Store,
    StoreError,
    StudentStatus,
    StudentVersion,
    TaskSummary,
)

__all__ = ["ApiKeyRecord", "ConfidenceMethod", "Exchange", "ExchangeStatus", "Store", "StoreError",
           "StudentStatus", "StudentVersion", "TaskSummary", "open_store"]


def open_store(url: str) -> Store:
    """The store for `url` (not yet opened: call `await store.open()`)."""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        raise StoreError("the PostgreSQL store is not available in this version; use sqlite:///path.db")
    raise StoreError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")
