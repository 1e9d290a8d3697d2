"""Early stop: the bounds it stops on never stop an answer `judge` would accept (property tests over the very
confidence functions the router applies), and through the gateway against the embedded model server (tiny
random Llama) as the student: a hopeless answer is stopped after its first tokens and the server frees the
slot, an accepted one is the same answer with early stop on or off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.chat.early_stop import ConfidenceBound, EarlyStop, JsonObjectPrefix
from gateway.router import CONFIDENCE_METHODS
from tests.gateway.test_cascade import ACCEPT_ANY, TASK, cascade_settings, register
from tests.inprocess import InProcessGateway, inprocess_gateway
from tests.servers import Server

logprobs = st.lists(st.floats(min_value=-20, max_value=0, allow_nan=False), min_size=1, max_size=60)


@given(logprobs, st.data())
def test_the_bound_is_never_below_the_confidence_any_continuation_ends_with(values: list[float],
                                                                          data: st.DataObject) -> None:
    cap = data.draw(st.integers(min_value=len(values), max_value=80))
    seen = data.draw(st.integers(min_value=1, max_value=len(values)))
    for method, confidence in CONFIDENCE_METHODS.items():
        bound = ConfidenceBound(method, cap)  # type: ignore[arg-type]
        for value in values[:seen]:
            bound.add(value)
        best = bound.best()
        assert best is not None and best >= confidence(values) - 1e-12, method
        # and it is reached: the same start, then every remaining token at 0
        assert best == pytest.approx(confidence(values[:seen] + [0.0] * (cap - seen)), abs=1e-12)


def test_without_a_length_limit_only_the_minimum_is_bounded() -> None:
    for method in CONFIDENCE_METHODS:
        bound = ConfidenceBound(method, None)  # type: ignore[arg-type]
        bound.add(-3.0)
        assert (bound.best() is not None) == (method == "min_logprob")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=10)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4), st.integers(min_value=1, max_value=7),
       st.booleans())
def test_no_start_of_a_json_object_is_refused(value: dict[str, Any], piece: int, pretty: bool) -> None:
    text = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False) + "\n"
    prefix = JsonObjectPrefix()
    for start in range(0, len(text), piece):
        assert prefix.feed(text[start:start + piece]) is None, text


@pytest.mark.parametrize(("text", "problem"), [
    ("Sure! {", "does not start a JSON object"), ('["a"]', "does not start a JSON object"),
    ('{"a": [1}', "unbalanced '}'"), ('{"a": 1} and more', "text after the JSON object"),
    ('{"a": "}"}}', "text after the JSON object")])
def test_text_that_cannot_become_a_json_object_is_refused(text: str, problem: str) -> None:
    found = None
    prefix = JsonObjectPrefix()
    for char in text:
        found = found or prefix.feed(char)
    assert found is not None and problem in found


def chunk(content: str | None = None, logprob: float | None = None, **delta: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": {**({"content": content} if content else {}), **delta}}
    if logprob is not None:
        choice["logprobs"] = {"content": [{"token": content, "logprob": logprob}]}
    return {"choices": [choice]}


def test_a_tool_name_is_judged_once_whole() -> None:
    guard = EarlyStop({"tools": [{"type": "function", "function": {"name": "get_weather"}}]}, None, "mean_logprob")
    calls = [{"index": 0, "function": {"name": "get_"}}]
    assert guard.check(chunk(tool_calls=calls)) is None  # a name in pieces is not judged yet
    assert guard.check(chunk(tool_calls=[{"index": 0, "function": {"name": "weather", "arguments": "{"}}])) is None
    stop = guard.check(chunk(tool_calls=[{"index": 1, "function": {"name": "delete_all", "arguments": "{}"}}]))
    assert stop is not None and stop.reason == "validator" and "'delete_all' does not exist" in stop.detail


def test_a_json_answer_is_stopped_at_its_first_wrong_character() -> None:
    guard = EarlyStop({"response_format": {"type": "json_object"}, "max_tokens": 50}, -1.0, "mean_logprob")
    assert guard.check(chunk(" ", -0.1)) is None
    stop = guard.check(chunk("Here", -0.1))
    assert stop is not None and stop.reason == "validator"
    # with tools, an answer calling one is not held to JSON mode: no prefix check
    assert EarlyStop({"response_format": {"type": "json_object"}, "tools": [{}]}, None,
                     "mean_logprob").check(chunk("Here")) is None


def test_a_mean_that_cannot_recover_stops() -> None:
    guard = EarlyStop({"max_tokens": 10}, -0.5, "mean_logprob")
    assert guard.check(chunk("a", -4.0)) is None  # -4 / 10 tokens ≥ -0.5: ten sure tokens could still save it
    stop = guard.check(chunk("b", -2.0))  # -6 / 10 < -0.5
    assert stop is not None and stop.reason == "low_confidence" and "stopped after 2 tokens" in stop.detail


# --- through the gateway --------------------------------------------------------------------------------

@pytest.fixture
def gateways(katan: Server, tiny_student: Server, tmp_path: Path) -> Iterator[Any]:
    with ExitStack() as stack:
        def make(*, threshold: float | None, early_stop: bool) -> InProcessGateway:
            store = tmp_path / f"store-{early_stop}-{threshold}.db"
            register(store, threshold=threshold)
            settings = cascade_settings(katan, tiny_student, store, early_stop=early_stop,
                                        input_cost_per_token=1e-8, output_cost_per_token=2e-8)
            gateway = stack.enter_context(inprocess_gateway(settings))
            response = gateway.client.put(f"/admin/tasks/{TASK}/rollout", json={"percent": 100},
                                          headers={"authorization": "Bearer admin-secret-token"})
            assert response.status_code == 200
            return gateway

        yield make


def ask(gateway: InProcessGateway, **extra: Any) -> httpx.Response:
    # no stop string: the random tiny model never says EOS, so a whole answer is max_tokens long
    response = gateway.client.post("/v1/chat/completions", headers={"X-Protege-Task": TASK}, json={
        "model": "gpt-4o-mini", "max_tokens": 40, "temperature": 0, "user": "u1", "logprobs": True,
        "messages": [{"role": "user", "content": "My order to Oslo is late."}], **extra})
    assert response.status_code == 200, response.text
    return response


def engine_counters(student: Server) -> dict[str, int]:
    counters: dict[str, int] = httpx.get(f"{student.url}/readyz", timeout=5).json()["engine"]
    return counters


def test_a_hopeless_answer_is_stopped_and_its_slot_freed(gateways: Any, tiny_student: Server) -> None:
    gateway = gateways(threshold=-0.001, early_stop=True)  # a random model is never this sure of a token
    before = engine_counters(tiny_student)
    response = ask(gateway)
    assert response.headers["x-protege-route"] == "fallback"
    [row] = [r for r in gateway.rows() if r.route == "fallback"]
    note = row.extra.student
    assert note is not None and note.reason == "low_confidence" and "stopped after 1 tokens" in note.detail
    assert note.completion_tokens == 1  # what the rejected attempt generated, kept on the row
    # billed for what it read and generated before the stop (the server's usage on every chunk)
    assert note.cost_usd is not None and 2e-8 < note.cost_usd < 1e-8 * 100 + 2e-8 * 40
    after = engine_counters(tiny_student)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] < 40  # not the whole answer
    assert gateway.metric("protege_student_early_stops_total", task=TASK, reason="low_confidence") == 1

    # early stop off: the whole answer is generated before it is rejected
    before = engine_counters(tiny_student)
    whole = gateways(threshold=-0.001, early_stop=False)
    assert ask(whole).headers["x-protege-route"] == "fallback"
    assert engine_counters(tiny_student)["generated_tokens"] - before["generated_tokens"] == 40
    [row] = [r for r in whole.rows() if r.route == "fallback"]
    assert row.extra.student is not None and row.extra.student.completion_tokens == 40


def test_an_accepted_answer_is_the_same_with_early_stop_on_or_off(gateways: Any) -> None:
    answers = []
    for early_stop in (True, False):
        response = ask(gateways(threshold=ACCEPT_ANY, early_stop=early_stop), stop=["e"])
        assert response.headers["x-protege-route"] == "student"
        body = response.json()
        [choice] = body["choices"]
        logprobs = [entry.pop("logprob") for entry in choice["logprobs"]["content"]]
        answers.append((choice, logprobs, body["usage"], body["model"], list(body)))
    (on, on_logprobs, *on_rest), (off, off_logprobs, *off_rest) = answers
    assert on == off and on_rest == off_rest and on["message"]["content"]
    # the student server's prefix cache may reuse the first request's prompt start: float noise at most
    assert on_logprobs == pytest.approx(off_logprobs, abs=1e-4)
