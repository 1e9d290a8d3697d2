"""Feedback in both stores: recorded, replaced by newer feedback, read by task or request, deleted with its
exchange by retention and forget, copied by a store migration."""

from __future__ import annotations

import dataclasses

from gateway.store import Feedback, open_store
from gateway.store.migrate import migrate_store
from tests.gateway.store.test_contract import opened
from tests.gateway.store.test_sqlite import exchange


def feedback(i: int, **changes: object) -> Feedback:
    base = Feedback(request_id=f"req_{i}", task="t", created_at=5000.0 + i, exchange_created_at=1000.0 + i,
                    source="api", rating=4.0, labels=("tone", "länge"), comment="too formal\x00!",
                    correction={"role": "assistant", "content": "Hi Ana,\nfixed.\u0000"}, user="u")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def test_feedback_round_trips_and_the_newest_replaces_the_older(store_url: str) -> None:
    store = await opened(store_url)
    try:
        await store.insert_exchanges([exchange(1), exchange(2), exchange(3, task="other")])
        assert (await store.get_exchange("req_1")).response == exchange(1).response  # type: ignore[union-attr]
        assert await store.get_exchange("req_missing") is None
        await store.put_feedback(feedback(1))
        await store.put_feedback(feedback(2, rating=None, labels=(), comment=None, user=None))
        await store.put_feedback(feedback(3, task="other", correction=None))
        first = (await store.list_feedback(request_ids=["req_1"]))[0]
        assert first.labels == ("tone", "länge") and first.rating == 4.0 and first.source == "api"
        assert first.correction == {"role": "assistant", "content": "Hi Ana,\nfixed.\u0000"}  # JSON keeps NUL
        assert first.comment in ("too formal\x00!", "too formal\ufffd!")  # PostgreSQL TEXT cannot hold NUL
        assert [f.request_id for f in await store.list_feedback(task="t")] == ["req_1", "req_2"]
        assert await store.list_feedback(request_ids=[]) == []

        await store.put_feedback(feedback(1, created_at=6000.0, rating=1.0, source="header", correction=None))
        again = await store.list_feedback(task="t")
        assert [(f.request_id, f.rating, f.source, f.correction) for f in again] == [
            ("req_2", None, "api", feedback(2).correction), ("req_1", 1.0, "header", None)]
    finally:
        await store.close()


async def test_feedback_goes_with_its_exchange(store_url: str) -> None:
    store = await opened(store_url)
    try:
        await store.insert_exchanges([exchange(1), exchange(2), exchange(3)])
        for i, user in ((1, "u"), (2, "v"), (3, "v")):
            await store.put_feedback(feedback(i, user=user))
        await store.delete_exchanges_before(1001.5)  # exchange 1 is older: its feedback goes with it
        assert [f.request_id for f in await store.list_feedback()] == ["req_2", "req_3"]
        await store.forget_user("v")
        assert await store.list_feedback() == []
    finally:
        await store.close()


async def test_a_store_copy_brings_feedback_and_keeps_the_newer(store_url: str, tmp_path: object) -> None:
    source_url = f"sqlite:///{tmp_path}/source.db"
    source = open_store(source_url)
    await source.open()
    try:
        await source.insert_exchanges([exchange(1), exchange(2)])
        await source.put_feedback(feedback(1))
        await source.put_feedback(feedback(2, created_at=100.0))
    finally:
        await source.close()
    dest = await opened(store_url)
    try:
        await dest.put_feedback(feedback(2, created_at=200.0, rating=2.0))  # newer on the destination: kept
    finally:
        await dest.close()
    counts = await migrate_store(source_url, store_url)
    assert counts["feedback"] == 1
    assert (await migrate_store(source_url, store_url))["feedback"] == 0  # a re-run adds nothing
    dest = await opened(store_url)
    try:
        assert [(f.request_id, f.rating) for f in await dest.list_feedback()] == [("req_2", 2.0), ("req_1", 4.0)]
    finally:
        await dest.close()
