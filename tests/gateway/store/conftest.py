from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.store import Store, open_store
from tests.pg import fresh_schema


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url
