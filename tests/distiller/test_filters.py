"""Each quality filter on its own: the reason it gives and the exchanges it lets through."""

from __future__ import annotations

from typing import Any

import pytest

from distiller.filters import (
    answer_length_filter,
    approx_tokens,
    example_text,
    is_refusal,
    length_filter,
    pii_filter,
    refusal_filter,
    status_filter,
    truncated_filter,
)
from tests.distiller.conftest import make_exchange

CALL = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]


def test_status_filter() -> None:
    assert status_filter(make_exchange(1)) is None
    assert status_filter(make_exchange(2, status="failed")) == "failed"
    assert status_filter(make_exchange(3, status="incomplete")) == "incomplete"


def test_truncated_filter() -> None:
    assert truncated_filter(make_exchange(1)) is None
    assert truncated_filter(make_exchange(2, finish_reason="length")) == "truncated"
    assert truncated_filter(make_exchange(3, finish_reason="tool_calls", tool_calls=CALL)) is None
    streamed = make_exchange(4)
    streamed.finish_reason = "length"  # recorded on the row only
    assert truncated_filter(streamed) == "truncated"


def test_answer_length_filter() -> None:
    assert answer_length_filter(make_exchange(1, answer="ok")) is None
    assert answer_length_filter(make_exchange(2, answer="")) == "empty_answer"
    assert answer_length_filter(make_exchange(3, answer="   \n")) == "empty_answer"
    assert answer_length_filter(make_exchange(4, status="failed")) == "empty_answer"
    assert answer_length_filter(make_exchange(5, answer="short"), min_chars=10) == "short_answer"
    assert answer_length_filter(make_exchange(6, answer="long enough"), min_chars=10) is None
    assert answer_length_filter(make_exchange(7, tool_calls=CALL), min_chars=10) is None  # tool calls are an answer
    assert answer_length_filter(make_exchange(8, answer=""), min_chars=0) is None


REFUSALS = [
    "I can't help with that request.",
    "I’m sorry, but I cannot provide instructions for this.",
    "I'm sorry, but I'm unable to share personal data.",
    "I am unable to assist with creating malware.",
    "As an AI language model, I cannot browse the internet.",
    "I must decline this request.",
    "Üzgünüm, bu isteği yerine getiremem.",
    "Üzgünüm, ama bunu yapamam.",
    "Maalesef bu konuda yardımcı olamıyorum.",
    "Bu konuda yardımcı olamam.",
    "Вибачте, я не можу допомогти з цим запитом.",
    "На жаль, я не можу цього зробити.",
    "Я не можу з цим допомогти.",
    "Извините, я не могу помочь с этим.",
    "Es tut mir leid, aber ich kann dabei nicht helfen.",
    "Je suis désolé, mais je ne peux pas répondre à cette demande.",
    "Lo siento, pero no puedo ayudar con eso.",
]
NOT_REFUSALS = [
    "Sure! Here is the summary you asked for.",
    "I can help with that: the capital of France is Paris.",
    "Paris",
    "Tabii, yardımcı olabilirim. Siparişiniz yarın kargoya verilecek.",
    "Звичайно, я можу допомогти. Ось відповідь.",
    "Natürlich kann ich helfen.",
    "Bien sûr, voici la réponse.",
    "Claro, puedo ayudarte.",
    "Here is a long answer. " * 30 + "Note: I can't help with tax filing, but your accountant can.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_recognised(text: str) -> None:
    assert is_refusal(text)
    assert refusal_filter(make_exchange(1, answer=text)) == "refusal"


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_helpful_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)
    assert refusal_filter(make_exchange(1, answer=text)) is None


def test_refusal_field_and_tool_calls() -> None:
    structured = make_exchange(1, answer=None, tool_calls=None)
    assert structured.response is not None
    structured.response["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "No."}
    assert refusal_filter(structured) == "refusal"
    assert refusal_filter(make_exchange(2, answer="I can't help with that", tool_calls=CALL)) is None


def example(content: str, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]}
    if tools:
        out["tools"] = tools
    return out


def test_length_filter_counts_chars_over_four_or_a_tokenizer() -> None:
    short, long = example("x" * 20), example("x" * 400)  # + "\nok": 23 and 403 characters
    assert approx_tokens(short) == 6 and approx_tokens(long) == 101
    assert length_filter(short, max_tokens=100) is None
    assert length_filter(long, max_tokens=100) == "too_long"
    assert length_filter(long, max_tokens=None) is None
    words = example("one two three four")
    assert approx_tokens(words, lambda text: len(text.split())) == 5
    assert length_filter(words, max_tokens=4, count_tokens=lambda text: len(text.split())) == "too_long"


def test_example_text_includes_tool_calls_and_definitions() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    ex = example("q", tools)
    ex["messages"].append({"role": "assistant", "content": None, "tool_calls": CALL})
    text = example_text(ex)
    assert '{"q": "x"}' in text and "lookup" in text and '"parameters"' in text


def test_pii_filter() -> None:
    assert pii_filter(example("my mail is a@example.com")) == "pii"
    assert pii_filter(example("nothing personal in 1999")) is None
    with_call = example("q")
    with_call["messages"].append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"ip": "10.1.2.3"}'}}]})
    assert pii_filter(with_call) == "pii"
