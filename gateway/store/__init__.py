"""Persistent state: captured exchanges, keys, students, routing. `open_store(url)` returns the backend for a URL:
`sqlite:///path.db` (one gateway process) or `postgresql://user@host/db` (replicas sharing one store)."""

from __future__ import annotations

from gateway.errors import StoreError
from gateway.store.base import (
    ApiKeyRecord,
    ConfidenceMethod,
    Exchange,
    ExchangeStatus,
    Store,
    StudentStatus,
    StudentVersion,
    TaskSummary,
    redacted_url,
    user_hash,
)

__all__ = ["ApiKeyRecord", "ConfidenceMethod", "Exchange", "ExchangeStatus", "Store", "StoreError",
           "StudentStatus", "StudentVersion", "TaskSummary", "open_store", "redacted_url", "user_hash"]


def open_store(url: str) -> Store:
    """The store for `url` (not yet opened: call `await store.open()`)."""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")
