"""What a gateway captured, read through the Store API (not by opening the SQLite file), so a test reads the
same way whatever the backend; for tests that run the gateway in another process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.store import Exchange, Store, open_store

T = TypeVar("T")


def read_store(store: Path | str, read: Callable[[Store], Awaitable[T]]) -> T:
    """`read(opened)` on the store (a SQLite file, or a store URL), opened for this read alone."""
    url = store if isinstance(store, str) else f"sqlite:///{store}"

    async def run() -> T:
        opened = open_store(url)
        await opened.open()
        try:
            return await read(opened)
        finally:
            await opened.close()

    # In a thread of its own: callable from sync tests and from inside a running event loop alike.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def captured(store: Path | str, **filters: Any) -> list[Exchange]:
    """The captured exchanges, oldest first (`list_exchanges` filters)."""
    return read_store(store, lambda opened: opened.list_exchanges(**filters))


def count_captured(store: Path | str, **filters: Any) -> int:
    """How many exchanges are captured (`count_exchanges` filters)."""
    return read_store(store, lambda opened: opened.count_exchanges(**filters))
