"""The store contract, run against every backend: a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.auth import KeyRing, hash_key, new_key
from gateway.errors import AuthenticationError
from gateway.routing_table import RoutingTable
from gateway.savings import task_report
from gateway.store import (
    ApiKeyRecord,
    Exchange,
    ExchangeExtra,
    Feedback,
    GateResult,
    RampPlan,
    RolloutRamp,
    Store,
    StoredResponse,
    StoreError,
    StudentDetails,
    StudentVersion,
    open_store,
    user_hash,
)
from gateway.store.schema import LATEST_VERSION
from gateway.store.sqlite import sqlite_path
from gateway.window_report import window_report
from tests.gateway.store.test_sqlite import exchange
from tests.pg import run_sql


def student(version: int, task: str = "t", status: str = "candidate", **kwargs: object) -> StudentVersion:
    return StudentVersion(task=task, version=version, status=status, model=f"{task}-v{version}",  # type: ignore[arg-type]
                          created_at=2000.0 + version, updated_at=2000.0 + version, **kwargs)  # type: ignore[arg-type]


def execute_raw(url: str, statement: str) -> None:
    """A statement run outside the store, to set up what the store itself would never write."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(sqlite_path(url)) as db:
            db.execute(statement)
    else:
        run_sql(url, statement)


async def opened(url: str) -> Store:
    store = open_store(url)
    await store.open()
    return store


DETAILS = StudentDetails(evaluation={"student": {"score": {"mean": 0.9}}}, gate=GateResult(True, "ok", 0.85),
                         training_s=12.5, training_cost_usd=0.25, run_dir="/runs/1")
TABLES = ("exchanges", "api_keys", "students", "task_routing", "forgotten_users", "console_sessions", "responses",
          "feedback", "rollout_ramps", "schema_version")


def drop_every_table(url: str) -> None:
    """Break the store behind its back: from now on every statement fails in the driver."""
    for table in TABLES:
        execute_raw(url, f"DROP TABLE {table}")


async def test_round_trip_and_queries(store: Store) -> None:
    assert await store.schema_version() == LATEST_VERSION
    assert await store.list_tasks() == [] and await store.count_exchanges() == 0
    await store.insert_exchanges([exchange(i, "a" if i < 3 else "b", "ok" if i != 1 else "failed") for i in range(5)])
    await store.insert_exchanges([exchange(0, "a")])  # a request id seen before is ignored
    await store.insert_exchanges([])
    assert await store.count_exchanges() == 5
    assert await store.count_exchanges(task="a") == 3
    assert await store.count_exchanges(status="ok") == 4
    assert await store.count_exchanges(task="a", status="ok") == 2
    got = await store.list_exchanges(task="a")
    assert [e.request_id for e in got] == ["req_0", "req_1", "req_2"]
    assert got[1] == exchange(1, "a", "failed")
    assert [e.request_id for e in await store.list_exchanges(status="failed")] == ["req_1"]
    assert [e.request_id for e in await store.list_exchanges(task="b", status="ok", limit=1)] == ["req_3"]
    tasks = await store.list_tasks()
    assert [(t.name, t.source, t.captured, t.good, t.first_seen, t.last_seen) for t in tasks] == [
        ("a", "header", 3, 2, 1000.0, 1002.0), ("b", "header", 2, 2, 1003.0, 1004.0)]
    assert len(await store.list_exchanges(limit=2)) == 2
    await store.check_writable()


async def test_ordering_and_keyset_pages_match_across_backends(store: Store) -> None:
    # equal timestamps fall back to request_id in byte order ("B" < "a"), whatever the database's locale
    ids = ["req_a", "req_B", "req_é", "req_Z", "req_0"]
    await store.insert_exchanges([dataclasses.replace(exchange(0), request_id=i) for i in ids])
    await store.insert_exchanges([dataclasses.replace(exchange(-5), request_id="req_early")])
    expected = ["req_early", *sorted(ids)]
    assert [e.request_id for e in await store.list_exchanges()] == expected
    pages, after = [], None
    while page := await store.list_exchanges(limit=2, after=after):
        pages.append([e.request_id for e in page])
        after = (page[-1].created_at, page[-1].request_id)
    assert pages == [expected[:2], expected[2:4], expected[4:]]
    assert [e.request_id for e in await store.list_exchanges(task="t", after=(1000.0, "req_Z"))] == ["req_a", "req_é"]
    assert [t.name for t in await store.list_tasks()] == ["t"]


async def test_a_window_report_from_the_stores_sums_equals_the_one_from_its_rows(store: Store) -> None:
    def row_(i: int, route: str, cost: float | None, status: str = "ok", **extra: object) -> Exchange:
        return dataclasses.replace(exchange(i), route=route, cost_usd=cost, status=status,  # type: ignore[arg-type]
                                   extra=ExchangeExtra.from_json(extra))
    rows = [
        *(row_(i, "teacher", 1e-4 * (i + 1), price_source="list price (gpt-4o-mini …)") for i in range(3)),
        row_(3, "fallback", 1.2e-4, price_source="list price (gpt-4o-mini …)",
             student={"version": 2, "cost_usd": 2e-6}),
        row_(4, "student", 3e-6, price_source="configured", counterfactual_cost_usd=9e-5, student={"version": 2}),
        row_(5, "student", 4e-6, price_source="configured"),  # captured before estimates were recorded
        row_(6, "student", None),  # unpriced
        row_(7, "teacher", None, "failed"),
        row_(8, "teacher", None),  # answered, unpriced
        row_(9, "shadow", 1e-4, shadow={"version": 2, "agreement": 1.0}),
        row_(10, "shadow", 1e-4, shadow={"version": 2, "agreement": 0.5}),
        row_(11, "shadow", 1e-4, shadow={"version": True, "agreement": 0.0}),  # not a version: not counted
        row_(12, "shadow", 1e-4, shadow={"version": 2, "agreement": "all"}),  # not an agreement: not counted
        row_(13, "teacher", 2e-4, price_source=5, counterfactual_cost_usd="1"),  # wrong types read as unset
        dataclasses.replace(row_(14, "teacher", 5e-4), task="other"),
    ]
    await store.insert_exchanges(rows)
    now = 2000.0
    students = [StudentVersion(task="t", version=2, status="active", model="m", created_at=1001.0, updated_at=1001.0,
                               details=StudentDetails(training_cost_usd=1e-4))]
    from_rows = task_report("t", await store.list_exchanges(task="t", bodies=False), students, now=now).to_dict()
    summed = await window_report(store, "t", students, since=None, now=now)
    assert summed is not None
    from_sums = summed.to_dict()
    assert from_rows.keys() == from_sums.keys()
    for key, value in from_rows.items():
        assert from_sums[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert from_sums["live_comparisons"] == 2 and from_sums["live_parity"] == pytest.approx(0.75)
    assert from_sums["routes"] == {"teacher": 6, "fallback": 1, "student": 3} and from_sums["estimated_rows"] == 2
    assert await window_report(store, "t", students, since=now, now=now) is None  # no traffic in the window


async def test_a_listing_without_bodies_keeps_everything_else(store: Store) -> None:
    await store.insert_exchanges([exchange(1), exchange(2)])
    full = await store.list_exchanges()
    light = await store.list_exchanges(bodies=False)
    assert [e.request for e in light] == [{}, {}] and [e.response for e in light] == [None, None]
    assert full[0].request["messages"] and full[0].response is not None
    assert [dataclasses.replace(e, request={}, response=None) for e in full] == light  # columns, extra: the same
    assert [e.request_id for e in await store.list_exchanges(bodies=False, limit=1, after=(1001.0, "req_1"))] \
        == ["req_2"]


async def test_newest_exchanges_of_a_window_route_and_ids(store: Store) -> None:
    rows = [dataclasses.replace(exchange(i), route=("fallback", "shadow", "student")[i % 3]) for i in range(9)]
    await store.insert_exchanges([*rows, exchange(20, "other")])
    newest = await store.newest_exchanges(task="t", limit=4)
    assert [e.request_id for e in newest] == ["req_8", "req_7", "req_6", "req_5"]  # newest first, bodies kept
    assert newest[0].response is not None and newest[0].request["messages"]
    fallbacks = await store.newest_exchanges(task="t", routes=["fallback"], limit=10)
    assert [e.request_id for e in fallbacks] == ["req_6", "req_3", "req_0"]
    assert [e.request_id for e in await store.newest_exchanges(task="t", routes=["fallback", "shadow"],
                                                               since=1004.0, limit=10)] == ["req_7", "req_6", "req_4"]
    picked = await store.newest_exchanges(task="t", request_ids=["req_2", "req_5", "req_20", "nope"], limit=10)
    assert [e.request_id for e in picked] == ["req_5", "req_2"]  # another task's row is not this task's
    assert await store.newest_exchanges(task="t", request_ids=[], limit=10) == []
    assert await store.newest_exchanges(task="t", routes=["teacher"], limit=10) == []


async def test_task_summaries_use_byte_order_and_count_good(store: Store) -> None:
    await store.insert_exchanges([exchange(1, "b"), exchange(2, "B", "failed"), exchange(3, "a", "incomplete")])
    tasks = await store.list_tasks()
    assert [(t.name, t.captured, t.good) for t in tasks] == [("B", 1, 0), ("a", 1, 0), ("b", 1, 1)]


async def test_large_batch_with_repeats_is_one_write(store: Store) -> None:
    batch = [exchange(i, f"task{i % 3}") for i in range(600)]
    await store.insert_exchanges([*batch, exchange(5, "other")])  # a repeat inside the batch: the first one wins
    assert await store.count_exchanges() == 600
    assert await store.count_exchanges(task="task2") == 200
    assert [e.task for e in await store.list_exchanges(limit=6)][5] == "task2"


async def test_payloads_round_trip_exactly(store: Store) -> None:
    tool = {"type": "function", "function": {"name": "book", "parameters": {
        "type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}},
        "required": ["zeta", "alpha"]}}}
    request = {"model": "m", "messages": [{"role": "user", "content": "Ünïcødé ✓ \U0001f600 \x00 \"q\" \\u0000"}],
               "tools": [tool], "temperature": 0.1, "n": 2**40, "stop": None}
    ex = Exchange(request_id="req_x", created_at=1234.5678901234, task="t", task_source="fingerprint", route="student",
                  model="m", upstream_model="u", status="incomplete", http_status=499, stream=True, request=request,
                  response=None, latency_ms=0.123456789, cost_usd=1e-7)
    await store.insert_exchanges([ex])
    [got] = await store.list_exchanges()
    assert got == ex and got.extra == ExchangeExtra() and got.response is None
    # key order is part of the prompt a student is trained on: the store must not reorder it
    assert list(got.request) == list(request)
    assert list(got.request["tools"][0]["function"]["parameters"]["properties"]) == ["zeta", "alpha"]


async def test_nul_characters_do_not_lose_the_batch(store: Store) -> None:
    bad = exchange(1)
    bad.error, bad.user, bad.extra = "boom\x00", "u\x00", ExchangeExtra(teacher_error="a\x00b")
    await store.insert_exchanges([bad, exchange(2)])
    first, second = await store.list_exchanges()
    assert second == exchange(2)
    # SQLite keeps NUL; PostgreSQL cannot hold it in TEXT or JSONB and stores U+FFFD instead
    assert first.error in ("boom\x00", "boom\ufffd") and first.extra.teacher_error in ("a\x00b", "a\ufffdb")
    assert first.request == bad.request


async def test_retention_deletes_in_batches(store: Store) -> None:
    await store.insert_exchanges([exchange(i, "a" if i % 2 else "b") for i in range(25)])
    assert await store.delete_exchanges_before(1000.0) == 0
    assert await store.delete_exchanges_before(1010.0, batch_size=3) == 10
    assert await store.count_exchanges() == 15
    assert [e.request_id for e in await store.list_exchanges(limit=1)] == ["req_10"]
    assert [(t.name, t.first_seen) for t in await store.list_tasks()] == [("a", 1011.0), ("b", 1010.0)]
    assert await store.delete_exchanges_before(1e12, batch_size=5) == 15  # an exact multiple of the batch
    assert await store.list_tasks() == []


async def test_retention_of_one_task_reports_progress(store: Store) -> None:
    await store.insert_exchanges([exchange(i, "a" if i % 2 else "b") for i in range(25)])
    assert await store.count_exchanges(created_before=1010.0) == 10
    assert await store.count_exchanges(task="a", created_before=1010.0) == 5
    calls: list[int] = []
    assert await store.delete_exchanges_before(1010.0, task="a", batch_size=2, progress=calls.append) == 5
    assert calls == [2, 4, 5]
    assert await store.count_exchanges(task="a") == 7 and await store.count_exchanges(task="b") == 13
    assert await store.delete_exchanges_before(1010.0, task="missing") == 0
    with pytest.raises(ValueError, match="batch_size"):
        await store.delete_exchanges_before(1010.0, batch_size=0)


def of_user(i: int, user: str | None) -> Exchange:
    return dataclasses.replace(exchange(i, "a" if i % 2 else "b"), user=user)


def stored_response(response_id: str, *, created_at: float = 1000.0, task: str = "t", user: str | None = None,
                    client: str | None = "key_a") -> StoredResponse:
    text = "caf\u00e9 \u0000 end"  # NUL survives in the JSON payloads of both backends
    return StoredResponse(response_id=response_id, created_at=created_at, task=task, client=client, user=user,
                          response={"id": response_id, "object": "response", "output": [{"text": text}]},
                          input_items=[{"id": "msg_1", "type": "message", "role": "user", "content": text}],
                          history=[{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}])


async def test_stored_responses_round_trip_replace_and_delete(store: Store) -> None:
    assert await store.get_response("resp_missing") is None
    first = stored_response("resp_1", user="u\x00x")
    await store.put_response(first)
    got = await store.get_response("resp_1")
    assert got is not None and got.response == first.response and got.history == first.history
    assert got.input_items == first.input_items and got.client == "key_a" and got.task == "t"
    await store.put_response(dataclasses.replace(first, history=[]))  # an id seen before is replaced
    assert (await store.get_response("resp_1")).history == []  # type: ignore[union-attr]
    assert await store.delete_response("resp_1") is True
    assert await store.delete_response("resp_1") is False
    assert await store.get_response("resp_1") is None


async def test_retention_and_forget_delete_stored_responses(store: Store) -> None:
    await store.put_response(stored_response("resp_old", created_at=1000.0, task="a"))
    await store.put_response(stored_response("resp_old_b", created_at=1000.0, task="b"))
    await store.put_response(stored_response("resp_new", created_at=3000.0, task="a"))
    await store.put_response(stored_response("resp_alice", created_at=3000.0, user="alice"))
    await store.delete_exchanges_before(2000.0, task="a")
    assert await store.get_response("resp_old") is None and await store.get_response("resp_old_b") is not None
    await store.delete_exchanges_before(2000.0)
    assert await store.get_response("resp_old_b") is None and await store.get_response("resp_new") is not None
    await store.forget_user("alice")
    assert await store.get_response("resp_alice") is None and await store.get_response("resp_new") is not None


async def test_forget_user_deletes_only_that_users_exchanges_and_records_a_hash(store: Store) -> None:
    users = ["alice@example.com", "bob", None, "Alice@example.com"]
    await store.insert_exchanges([of_user(i, users[i % 4]) for i in range(22)])
    assert await store.forgotten_users() == {} and await store.forgotten_user_hashes() == set()
    assert await store.count_exchanges(user="alice@example.com") == 6
    calls: list[int] = []
    started = time.time()

    assert await store.forget_user("alice@example.com", batch_size=3, progress=calls.append) == 6

    assert calls == [3, 6, 6]  # an exact multiple of the batch: one more, empty batch ends it
    assert await store.count_exchanges(user="alice@example.com") == 0
    assert [e.user for e in await store.list_exchanges(limit=3)] == ["bob", None, "Alice@example.com"]
    assert await store.count_exchanges() == 16  # user ids are exact: "Alice@…" is someone else
    forgotten = await store.forgotten_users()
    assert list(forgotten) == [user_hash("alice@example.com")] and started <= forgotten[user_hash(
        "alice@example.com")] <= time.time()
    assert "alice@example.com" not in str(forgotten)
    assert await store.forgotten_user_hashes() == set(forgotten)

    # again: nothing left to delete, and the user keeps the time it was first forgotten
    assert await store.forget_user("alice@example.com") == 0
    assert await store.forgotten_users() == forgotten
    # a user with no exchanges yet is recorded all the same (their future exchanges stay out of datasets)
    assert await store.forget_user("carol") == 0
    assert await store.forgotten_user_hashes() == {user_hash("alice@example.com"), user_hash("carol")}
    with pytest.raises(ValueError, match="no user"):
        await store.forget_user("")


async def test_forgotten_users_are_copied_by_hash(store: Store) -> None:
    await store.add_forgotten_users({})
    await store.add_forgotten_users({"h1": 10.0, "h2": 20.0})
    await store.add_forgotten_users({"h2": 99.0, "h3": 30.0})  # h2 was recorded first at 20
    assert await store.forgotten_users() == {"h1": 10.0, "h2": 20.0, "h3": 30.0}


async def test_forgetting_a_user_id_with_nul(store: Store) -> None:
    # PostgreSQL stores NUL as U+FFFD (see test_nul_characters_do_not_lose_the_batch): the id as the client
    # sent it must still find the rows, and hash as it does in SQLite
    await store.insert_exchanges([of_user(1, "u\x00"), of_user(2, "u")])
    assert await store.count_exchanges(user="u\x00") == 1
    assert await store.forget_user("u\x00") == 1
    assert [e.user for e in await store.list_exchanges()] == ["u"]
    assert await store.forgotten_user_hashes() == {user_hash("u\x00")} == {user_hash("u\ufffd")}


async def test_api_keys_are_stored_hashed_and_revocable(store: Store) -> None:
    assert await store.list_api_keys() == []
    key, record = new_key("ci")
    await store.add_api_key(record)
    older = ApiKeyRecord("key_old", "old", "0" * 64, record.created_at - 10, revoked=True)
    await store.add_api_key(older)
    listed = await store.list_api_keys()
    assert listed == [older, record]
    assert listed[1].key_hash != key and not listed[1].revoked and listed[1].created_at <= time.time()
    with pytest.raises(StoreError):
        await store.add_api_key(record)
    assert await store.revoke_api_key(record.key_id)
    assert await store.revoke_api_key(record.key_id)  # already revoked: still found
    assert not await store.revoke_api_key("key_missing")
    assert all(k.revoked for k in await store.list_api_keys())


async def test_students_registry(store: Store) -> None:
    assert await store.list_students() == []
    await store.add_student(student(2, "b"))
    await store.add_student(student(1, "b", details=DETAILS, prompt_distilled=True,
                                    system_prompt_hash="h", threshold=-0.5, confidence_method="min_logprob",
                                    base_model="smol", trainer="local", artifact="/a", dataset_hash="d"))
    await store.add_student(student(1, "a"))
    with pytest.raises(StoreError, match="already exists"):
        await store.add_student(student(1, "a"))
    assert [(s.task, s.version) for s in await store.list_students()] == [("a", 1), ("b", 1), ("b", 2)]
    [b1, b2] = await store.list_students(task="b")
    assert b1 == student(1, "b", details=DETAILS, prompt_distilled=True, system_prompt_hash="h",
                         threshold=-0.5, confidence_method="min_logprob", base_model="smol", trainer="local",
                         artifact="/a", dataset_hash="d")
    assert b2.details == StudentDetails() and not b2.prompt_distilled and b2.threshold is None
    assert await store.list_students(task="missing") == []


async def test_activation_retires_the_previous_active_version(store: Store) -> None:
    for version in (1, 2, 3):
        await store.add_student(student(version))
    await store.add_student(student(1, "other", status="active"))
    assert await store.set_student_status("t", 1, "active")
    assert await store.set_student_status("t", 2, "active")
    statuses = {s.version: s.status for s in await store.list_students(task="t")}
    assert statuses == {1: "retired", 2: "active", 3: "candidate"}
    assert not await store.set_student_status("t", 9, "active")  # unknown version: nothing changes
    assert {s.version: s.status for s in await store.list_students(task="t")} == statuses
    assert await store.set_student_status("t", 3, "rejected")
    assert await store.set_student_status("t", 2, "retired")
    assert [s.status for s in await store.list_students(task="t")] == ["retired", "retired", "rejected"]
    assert [s.status for s in await store.list_students(task="other")] == ["active"]
    [changed, *_] = await store.list_students(task="t")
    assert changed.updated_at > changed.created_at


async def test_concurrent_activations_leave_one_active(store_url: str) -> None:
    stores = [await opened(store_url) for _ in range(3)]
    try:
        for version in range(1, 7):
            await stores[0].add_student(student(version))
        for round_ in range(4):
            versions = [1 + (round_ + i) % 6 for i in range(3)]
            await asyncio.gather(*(s.set_student_status("t", v, "active") for s, v in zip(stores, versions,
                                                                                          strict=True)))
            assert [s.status for s in await stores[0].list_students()].count("active") == 1
    finally:
        for s in stores:
            await s.close()


async def test_thresholds(store: Store) -> None:
    await store.add_student(student(1))
    assert await store.set_student_threshold("t", 1, -0.25)
    assert (await store.list_students())[0].threshold == -0.25
    assert await store.set_student_threshold("t", 1, None)
    assert (await store.list_students())[0].threshold is None
    assert not await store.set_student_threshold("t", 2, -1.0)


async def test_rollouts(store: Store) -> None:
    assert await store.rollouts() == {}
    await store.set_rollout("a", 10)
    await store.set_rollout("b", 0)
    await store.set_rollout("a", 55.5)
    assert await store.rollouts() == {"a": 55.5, "b": 0.0}


async def test_data_survives_reopen_and_migrations_are_idempotent(store_url: str) -> None:
    store = await opened(store_url)
    await store.insert_exchanges([exchange(1)])
    await store.set_rollout("t", 5)
    await store.close()
    for _ in range(2):
        again = await opened(store_url)
        assert await again.count_exchanges() == 1 and await again.rollouts() == {"t": 5.0}
        assert await again.schema_version() == LATEST_VERSION
        await again.close()


async def test_concurrent_opens_migrate_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(8)]
    # return_exceptions: a failed open must not leave the others' connections (and threads) behind
    results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
    try:
        assert [r for r in results if r is not None] == []
        await asyncio.gather(*(s.insert_exchanges([exchange(i)]) for i, s in enumerate(stores)))
        for s in stores:
            assert await s.schema_version() == LATEST_VERSION
            assert await s.count_exchanges() == 8
    finally:
        for s in stores:
            await s.close()


async def test_newer_schema_is_refused(store_url: str) -> None:
    execute_raw(store_url, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
    execute_raw(store_url, f"INSERT INTO schema_version VALUES ({LATEST_VERSION + 1})")
    with pytest.raises(StoreError, match="newer"):
        await open_store(store_url).open()


async def test_a_closed_store_raises_store_error(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(StoreError, match="not open"):
        await store.count_exchanges()
    await store.open()
    await store.close()
    await store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="not open"):
        await store.insert_exchanges([exchange(1)])


async def test_an_older_schema_is_upgraded(store_url: str) -> None:
    store = await opened(store_url)
    await store.insert_exchanges([exchange(1)])
    await store.close()
    # back to version 2, as an older Protégé left it
    for statement in ("DROP TABLE rollout_ramps", "DROP TABLE feedback", "DROP TABLE responses",
                      "DROP TABLE console_sessions",
                      "DROP TABLE forgotten_users",
                      "DROP INDEX exchanges_user",
                      "DROP INDEX exchanges_created",
                      "UPDATE schema_version SET version = 2"):
        execute_raw(store_url, statement)
    again = await opened(store_url)
    assert await again.schema_version() == LATEST_VERSION == 8
    assert await again.forget_user("u") == 1 and await again.forgotten_user_hashes() == {user_hash("u")}
    await again.insert_exchanges([exchange(2)])
    assert await again.delete_exchanges_before(2000.0) == 1
    await again.put_response(stored_response("resp_1"))
    assert await again.get_response("resp_1") is not None
    await again.put_feedback(Feedback("req_2", "t", 1.0, 1.0, "api", rating=1.0))
    assert len(await again.list_feedback()) == 1
    await again.put_ramp(RolloutRamp("r", "t", 1, RampPlan((50.0,), 0.0), "running", 0, 1.0, 1.0, 1.0))
    assert [r.ramp_id for r in await again.list_ramps()] == ["r"]
    await again.close()


async def test_server_errors_become_store_errors(store_url: str) -> None:
    store = await opened(store_url)
    try:
        execute_raw(store_url, "DROP TABLE task_routing")
        with pytest.raises(StoreError, match="cannot read rollouts"):
            await store.rollouts()
        await store.insert_exchanges([exchange(1)])  # the connection is still usable
        assert await store.count_exchanges() == 1
    finally:
        await store.close()


async def test_every_driver_error_becomes_a_store_error(store_url: str) -> None:
    store = await opened(store_url)
    await store.add_student(student(1))
    drop_every_table(store_url)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "schema_version": store.schema_version,
        "insert_exchanges": lambda: store.insert_exchanges([exchange(1)]),
        "list_tasks": store.list_tasks,
        "list_exchanges": store.list_exchanges,
        "count_exchanges": store.count_exchanges,
        "delete_exchanges_before": lambda: store.delete_exchanges_before(2000.0),
        "forget_user": lambda: store.forget_user("u"),
        "forgotten_users": store.forgotten_users,
        "add_forgotten_users": lambda: store.add_forgotten_users({user_hash("u"): 1.0}),
        "add_console_session": lambda: store.add_console_session("s", 1.0, 2.0),
        "console_session_expiry": lambda: store.console_session_expiry("s"),
        "delete_console_session": lambda: store.delete_console_session("s"),
        "add_api_key": lambda: store.add_api_key(new_key("ci")[1]),
        "list_api_keys": store.list_api_keys,
        "revoke_api_key": lambda: store.revoke_api_key("key_x"),
        "add_student": lambda: store.add_student(student(2)),
        "list_students": store.list_students,
        "set_student_status": lambda: store.set_student_status("t", 1, "active"),
        "set_student_threshold": lambda: store.set_student_threshold("t", 1, 0.5),
        "set_rollout": lambda: store.set_rollout("t", 5),
        "rollouts": store.rollouts,
        "put_response": lambda: store.put_response(stored_response("resp_1")),
        "get_response": lambda: store.get_response("resp_1"),
        "delete_response": lambda: store.delete_response("resp_1"),
        "get_exchange": lambda: store.get_exchange("req_1"),
        "put_feedback": lambda: store.put_feedback(Feedback("req_1", "t", 1.0, 1.0, "api", rating=1.0)),
        "list_feedback": store.list_feedback,
        "put_ramp": lambda: store.put_ramp(RolloutRamp("r", "t", 1, RampPlan((50.0,), 0.0), "running", 0, 1.0, 1.0,
                                                        1.0)),
        "list_ramps": store.list_ramps,
        "replace_ramp": lambda: store.replace_ramp(*[RolloutRamp("r", "t", 1, RampPlan((50.0,), 0.0), "running", 0,
                                                                 1.0, 1.0, 1.0)] * 2),
    }
    escaped: list[str] = []
    try:
        for name, call in calls.items():
            try:
                await call()
            except StoreError as exc:
                assert str(exc).startswith("cannot "), (name, str(exc))
            except Exception as exc:  # what the gateway's callers would not catch
                escaped.append(f"{name}: {exc!r}")
            else:
                escaped.append(f"{name}: no error")
    finally:
        await store.close()
    assert escaped == []


async def test_key_ring_keeps_the_last_known_keys_when_the_store_fails(store_url: str) -> None:
    store = await opened(store_url)
    try:
        key, record = new_key("app")
        await store.add_api_key(record)
        ring = KeyRing([], store, refresh_s=0)
        assert await ring.check(key) == hash_key(key)[:16]
        drop_every_table(store_url)
        with pytest.raises(StoreError):
            await store.list_api_keys()
        await ring.refresh(force=True)
        assert ring.enabled and ring.active_keys == 1
        assert await ring.check(key) == hash_key(key)[:16]
        with pytest.raises(AuthenticationError, match="invalid API key"):
            await ring.check(new_key("other")[0])
    finally:
        await store.close()


async def test_routing_table_keeps_the_last_known_routes_when_the_store_fails(store_url: str) -> None:
    store = await opened(store_url)
    try:
        await store.add_student(student(1, status="active"))
        await store.set_rollout("t", 25)
        table = RoutingTable(store, refresh_s=0)
        route = await table.route("t")
        assert route is not None and route.student.version == 1 and route.rollout_percent == 25
        drop_every_table(store_url)
        with pytest.raises(StoreError):
            await store.list_students()
        await table.refresh(force=True)
        assert await table.route("t") == route
        assert table.active() == {"t": route} and table.rollouts() == {"t": 25.0}
    finally:
        await store.close()
