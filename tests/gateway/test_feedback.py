"""Feedback from the app (`gateway.feedback`): `POST /v1/feedback` with the request id an answer came with, the
admin route, and the X-Protege-Feedback header on a later request — through the official SDKs, against a real
upstream (llm-katan), into a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.store import Feedback
from tests.inprocess import InProcessGateway, inprocess_gateway, poll, settings_for
from tests.servers import TEST_ADMIN_TOKEN, Server

KEYS = "pk-feedback-app-one-0001,pk-feedback-app-two-0002"
APP_ONE, APP_TWO = KEYS.split(",")
ADMIN = {"authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    store = tmp_path_factory.mktemp("feedback") / "store.db"
    settings = settings_for(katan, store, gateway_keys=KEYS, config={"tasks": {"stars": {"min_rating": 4}}})
    with inprocess_gateway(settings) as app:
        yield app


def ask(gateway: InProcessGateway, task: str, key: str = APP_ONE, **headers: str) -> str:
    """A chat request through the openai SDK; the request id its answer came with."""
    raw = gateway.openai(key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"a question for {task}"}],
        extra_headers={"X-Protege-Task": task, **headers})
    assert raw.parse().choices[0].message.content
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    return request_id


def give(gateway: InProcessGateway, body: dict[str, Any], key: str = APP_ONE) -> Any:
    return gateway.openai(key).post("/feedback", body=body, cast_to=object)


def feedback_of(gateway: InProcessGateway, request_id: str) -> Feedback | None:
    found = gateway.run(gateway.state.store.list_feedback(request_ids=[request_id]))
    return found[0] if found else None


def test_feedback_is_recorded_on_the_answer_it_names(gateway: InProcessGateway) -> None:
    request_id = ask(gateway, "support")
    # posted at once: the exchange may still be in the capture queue, and the feedback waits for it
    recorded = give(gateway, {"request_id": request_id, "rating": False, "labels": ["tone", "tone", "wrong"],
                              "comment": "rude", "correction": "Dear customer, thank you."})
    assert recorded["object"] == "feedback" and recorded["task"] == "support" and recorded["rating"] == 0.0
    assert recorded["labels"] == ["tone", "wrong"] and recorded["source"] == "api"
    stored = feedback_of(gateway, request_id)
    assert stored is not None and stored.correction == {"role": "assistant", "content": "Dear customer, thank you."}
    assert stored.user is None and stored.exchange_created_at == gateway.rows(task="support")[0].created_at
    assert gateway.metric("protege_feedback_total", task="support", source="api", verdict="corrected") == 1

    # newer feedback replaces the older; a rating under the task's floor counts as low (1-5 stars here)
    stars = ask(gateway, "stars")
    give(gateway, {"request_id": stars, "rating": 5})
    give(gateway, {"request_id": stars, "rating": 2,
                   "correction": {"role": "assistant", "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "{}"}}]}})
    assert feedback_of(gateway, stars).rating == 2.0  # type: ignore[union-attr]
    assert feedback_of(gateway, stars).correction["tool_calls"][0]["function"]["name"] == "refund"  # type: ignore[index, union-attr]
    give(gateway, {"request_id": stars, "rating": 3})
    assert gateway.metric("protege_feedback_total", task="stars", verdict="ok") == 1
    assert gateway.metric("protege_feedback_total", task="stars", verdict="low") == 1


@pytest.mark.parametrize(("body", "param"), [
    ({"request_id": "req_x"}, None),  # neither a rating nor a correction
    ({"request_id": "req_x", "rating": "5"}, "rating"),  # a string is not a number
    ({"request_id": "req_x", "rating": 1, "colour": "red"}, "colour"),
    ({"request_id": "req_x", "correction": "   "}, None),  # nothing said: the string has no text
    ({"request_id": "req_x", "correction": {"role": "user", "content": "x"}}, "correction"),
    ({"request_id": "", "rating": 1}, "request_id"),
    ({"request_id": "req_x", "rating": 1, "labels": ["x" * 65]}, "labels"),
])
def test_malformed_feedback_is_a_400_in_openai_shape(gateway: InProcessGateway, body: dict[str, Any],
                                                     param: str | None) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        give(gateway, body)
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    if param is not None:
        assert str(error["param"]).startswith(param)
    response = gateway.client.post("/v1/feedback", content=b'{"request_id": "req_x", "rating": NaN}',
                                   headers={"authorization": f"Bearer {APP_ONE}", "content-type": "application/json"})
    assert response.status_code == 400


def test_feedback_on_a_request_it_cannot_see_is_a_404(gateway: InProcessGateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        give(gateway, {"request_id": "req_" + "0" * 32, "rating": 1})
    assert caught.value.code == "unknown_request"
    # another app's request: the same 404 (its existence is not told), and nothing recorded
    other = ask(gateway, "support", key=APP_TWO)
    with pytest.raises(openai.NotFoundError):
        give(gateway, {"request_id": other, "rating": 1}, key=APP_ONE)
    assert feedback_of(gateway, other) is None
    # a request sent with capture off is not kept, so it takes no feedback
    private = ask(gateway, "support", **{"X-Protege-Capture": "off"})
    with pytest.raises(openai.NotFoundError):
        give(gateway, {"request_id": private, "rating": 1})
    # without a key: the gateway's own 401
    response = gateway.client.post("/v1/feedback", json={"request_id": other, "rating": 1})
    assert response.status_code == 401
    assert gateway.metric("protege_feedback_rejected_total", source="api", reason="unknown_request") >= 3

    # the admin may rate any request, and lists a task's feedback
    response = gateway.client.post("/admin/feedback", json={"request_id": other, "rating": 0.25}, headers=ADMIN)
    assert response.status_code == 200 and response.json()["source"] == "admin"
    listed = gateway.client.get("/admin/tasks/support/feedback", headers=ADMIN).json()["feedback"]
    assert other in {f["request_id"] for f in listed}
    assert gateway.client.post("/admin/feedback", json={"request_id": other, "rating": 1}).status_code in (401, 403)


def test_the_feedback_header_rides_on_a_later_request_and_never_holds_it_up(gateway: InProcessGateway) -> None:
    first = ask(gateway, "header")
    gateway.flush()
    header = json.dumps({"request_id": first, "rating": 1, "comment": "gut, danke"})
    ask(gateway, "header", **{"X-Protege-Feedback": header})
    recorded = poll(lambda: feedback_of(gateway, first), what="header feedback")
    assert recorded.source == "header" and recorded.rating == 1.0

    # the Anthropic Messages API carries it too
    second = ask(gateway, "header")
    client = anthropic.Anthropic(base_url=gateway.url, api_key=APP_ONE, http_client=gateway.client, max_retries=0)
    message = client.messages.create(model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}],
                                     extra_headers={"X-Protege-Feedback": json.dumps(
                                         {"request_id": second, "rating": 0})})
    assert message.content
    assert poll(lambda: feedback_of(gateway, second), what="anthropic header feedback").rating == 0.0

    # malformed, unknown or another app's: the request is answered all the same, and the miss is counted
    before = gateway.metric("protege_feedback_rejected_total", source="header")
    for bad in ("not json", json.dumps({"request_id": first}), json.dumps({"request_id": "req_nope", "rating": 1})):
        assert ask(gateway, "header", **{"X-Protege-Feedback": bad})
    ask(gateway, "header", key=APP_TWO, **{"X-Protege-Feedback": json.dumps({"request_id": first, "rating": 0})})
    poll(lambda: gateway.metric("protege_feedback_rejected_total", source="header") == before + 4,
         what="rejected header feedback counted")
    assert feedback_of(gateway, first).rating == 1.0  # type: ignore[union-attr]


def test_feedback_is_in_the_public_schema(gateway: InProcessGateway) -> None:
    paths = gateway.client.get("/openapi.json").json()["paths"]
    assert "/v1/feedback" in paths and "/admin/feedback" not in paths


def test_the_console_shows_a_tasks_feedback(gateway: InProcessGateway) -> None:
    request_id = ask(gateway, "console-feedback")
    give(gateway, {"request_id": request_id, "rating": 0, "comment": "<b>rude</b>", "labels": ["tone"]})
    give(gateway, {"request_id": ask(gateway, "console-feedback"), "rating": 1, "correction": "Better: hello."})
    html = gateway.client.get("/admin/ui/tasks/console-feedback", headers=ADMIN).text
    assert 'id="feedback-table"' in html and request_id in html
    assert "&lt;b&gt;rude&lt;/b&gt;" in html and "<b>rude</b>" not in html  # escaped, as every page is
    assert "ok: 0 · low: 1 · corrected: 1 · unrated: 0" in " ".join(html.split())
    assert "Better: hello." in html


def test_feedback_text_is_redacted_when_capture_is(katan: Server, tmp_path: Path) -> None:
    settings = settings_for(katan, tmp_path / "store.db", config={"capture": {"redact_pii": True}})
    with inprocess_gateway(settings) as gateway:
        request_id = ask(gateway, "pii")
        give(gateway, {"request_id": request_id, "rating": 0, "comment": "mail me at ana@example.com",
                       "correction": "Call +44 20 7946 0958 for the refund."})
        stored = feedback_of(gateway, request_id)
    assert stored is not None and stored.comment == "mail me at [EMAIL]"
    assert stored.correction is not None and "7946" not in stored.correction["content"]


def test_feedback_calls_count_against_the_keys_rate_limit(katan: Server, tmp_path: Path) -> None:
    settings = settings_for(katan, tmp_path / "store.db", config={"rate_limits": {"requests_per_minute": 2}})
    with inprocess_gateway(settings) as gateway:
        request_id = ask(gateway, "limited")
        give(gateway, {"request_id": request_id, "rating": 1})
        with pytest.raises(openai.RateLimitError):
            give(gateway, {"request_id": request_id, "rating": 0})
