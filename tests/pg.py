"""The real PostgreSQL server for tests: a fresh schema per use, dropped afterwards.

The server is at PROTEGE_TEST_POSTGRES_URL (default: 127.0.0.1:5432, database `test`, as in CI). A missing
server fails the test with a clear message: skipping would hide that the PostgreSQL store went untested.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import pytest

BASE_URL = os.environ.get("PROTEGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _run(url: str, statements: list[str]) -> list[Any]:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url} ({exc}); the store tests need it: start it or set "
                    "PROTEGE_TEST_POSTGRES_URL", pytrace=False)
    try:
        return [await conn.fetch(s) for s in statements]
    finally:
        await conn.close()


def run_sql(url: str, *statements: str) -> list[Any]:
    """Run statements on their own connection; callable from sync tests and from inside a running loop."""
    # In a thread of its own: asyncio.run in this thread would replace the test's event loop.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _run(url, list(statements))).result()


def schema_url(schema: str) -> str:
    """The store URL whose connections use `schema` (asyncpg passes unknown URL parameters as settings)."""
    return f"{BASE_URL}{'&' if '?' in BASE_URL else '?'}search_path={schema}"


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """A store URL on an empty schema of its own; the schema is dropped afterwards."""
    schema = f"protege_test_{uuid.uuid4().hex[:12]}"
    run_sql(BASE_URL, f'CREATE SCHEMA "{schema}"')
    try:
        yield schema_url(schema)
    finally:
        run_sql(BASE_URL, f'DROP SCHEMA "{schema}" CASCADE')
