"""Which captured exchanges are not training data, and why: pure predicates, one concern each.

Every filter returns a drop reason (a short snake_case string that the curation report counts) or
None to keep. Exchange filters look at the captured exchange; example filters look at the training
example as it will be written (after prompt distillation and redaction), because that is what the
student is trained on and what must fit its context.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from gateway.pii import contains_pii, message_strings
from gateway.store import Exchange
from gateway.tasks import message_text

TokenCounter = Callable[[str], int]

FAILED = "failed"
INCOMPLETE = "incomplete"
TRUNCATED = "truncated"
EMPTY_ANSWER = "empty_answer"
SHORT_ANSWER = "short_answer"
REFUSAL = "refusal"
TOO_LONG = "too_long"
PII = "pii"

# How far into an answer a refusal is looked for: refusals lead; a long helpful answer that quotes
# "I can't help with X" further down is not one.
_REFUSAL_WINDOW = 400
_TR_CANNOT = r"\w*(?:amam|emem|am[ıi]yorum|em[ıi]yorum)\b"  # Turkish negative ability: yapamam, edemem, olamıyorum
_REFUSALS = re.compile("|".join((
    # English
    r"\bi(?:'m| am) (?:sorry|afraid),? (?:but )?i(?: can't| cannot| can not| won't| will not| am unable|'m unable"
    r"| am not able|'m not able)",
    r"\bi (?:can't|cannot|can not|won't|will not) (?:help|assist|comply|provide|fulfil|do that|support|answer"
    r"|create|generate|engage|share|write)",
    r"\bi(?:'m| am) (?:unable|not able) to (?:help|assist|comply|provide|fulfil|do that|support|answer|create"
    r"|generate|share|write)",
    r"\bi must (?:decline|refuse)\b",
    r"\bas an ai(?: language model| assistant)?,? i (?:can't|cannot|am unable|don't|do not|am not able)",
    # Turkish
    r"\b(?:üzgünüm|maalesef|kusura bakma(?:yın)?)\b[^.!?\n]{0,80}?" + _TR_CANNOT,
    r"\b(?:yardımcı|destek) ol(?:amam|amıyorum)\b",
    r"\bbunu (?:yapamam|yapamıyorum|sağlayamam|veremem)\b",
    # Ukrainian
    r"\b(?:вибачте|на жаль|перепрошую|мені шкода)\b[^.!?\n]{0,80}?\bне можу\b",
    r"\bя не можу (?:(?:з цим|вам|тобі|в цьому|у цьому) )?(?:допомогти|виконати|надати|відповісти|зробити)",
    # Russian
    r"\b(?:извините|простите|к сожалению)\b[^.!?\n]{0,80}?\bне могу\b",
    r"\bя не могу (?:(?:с этим|вам|тебе|в этом) )?(?:помочь|выполнить|предоставить|ответить|сделать)",
    # German, French, Spanish
    r"\b(?:es )?tut mir leid,? (?:aber )?ich kann\b[^.!?\n]{0,60}?\bnicht\b",
    r"\bich kann (?:(?:dir|ihnen|dabei|damit|hierbei) )*nicht (?:helfen|behilflich)",
    r"\b(?:je suis )?désolée?,? (?:mais )?je ne (?:peux|suis pas en mesure)",
    r"\bje ne peux pas (?:vous |t'|t’)?(?:aider|répondre|fournir|faire)",
    r"\blo siento,? (?:pero )?no (?:puedo|me es posible)",
    r"\bno puedo (?:ayudar|asistir|proporcionar|hacer eso|responder)",
)))


def answer_message(exchange: Exchange) -> dict[str, Any] | None:
    """The first choice's message, as the teacher answered; None when there is none."""
    choices = (exchange.response or {}).get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    return message if isinstance(message, dict) else None


def answer_text(exchange: Exchange) -> str:
    message = answer_message(exchange)
    return message_text(message.get("content")) if message else ""


def status_filter(exchange: Exchange) -> str | None:
    """Failed requests have no answer; incomplete ones (client gone mid-stream) have part of one."""
    if exchange.status == "failed":
        return FAILED
    if exchange.status == "incomplete":
        return INCOMPLETE
    return None


def truncated_filter(exchange: Exchange) -> str | None:
    """An answer cut at the token limit teaches the student to stop mid-sentence."""
    choices = (exchange.response or {}).get("choices") or []
    reason = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
    return TRUNCATED if "length" in (reason, exchange.finish_reason) else None


def answer_length_filter(exchange: Exchange, min_chars: int = 1) -> str | None:
    """Answers under `min_chars` characters (stripped). A tool-call answer is never empty: the calls are
    the answer."""
    message = answer_message(exchange)
    if message is not None and message.get("tool_calls"):
        return None
    length = len(answer_text(exchange).strip())
    if length == 0 and min_chars > 0:
        return EMPTY_ANSWER
    return SHORT_ANSWER if length < min_chars else None


def is_refusal(text: str) -> bool:
    """Whether an answer opens by declining (English, Turkish, Ukrainian, Russian, German, French, Spanish).
    A heuristic: it looks for first-person inability phrases near the start of the answer."""
    head = text[:_REFUSAL_WINDOW].lower().replace("’", "'").replace("ʼ", "'")
    return _REFUSALS.search(head) is not None


def refusal_filter(exchange: Exchange) -> str | None:
    """A teacher's refusal trains the student to refuse; the structured-output `refusal` field counts too."""
    message = answer_message(exchange)
    if message is None or message.get("tool_calls"):
        return None
    if message.get("refusal") or is_refusal(answer_text(exchange)):
        return REFUSAL
    return None


def example_text(example: dict[str, Any]) -> str:
    """Everything in a training example that becomes tokens: message texts, tool calls and tool definitions."""
    parts: list[str] = []
    for message in example.get("messages", []):
        parts.extend(message_strings(message))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.append(str(function.get("name", "")))
    if example.get("tools"):
        parts.append(json.dumps(example["tools"], ensure_ascii=False, sort_keys=True))
    return "\n".join(parts)


def approx_tokens(example: dict[str, Any], count_tokens: TokenCounter | None = None) -> int:
    """The example's length in tokens: `count_tokens` (a tokenizer) when given, else characters / 4."""
    text = example_text(example)
    return count_tokens(text) if count_tokens is not None else math.ceil(len(text) / 4)


def length_filter(example: dict[str, Any], max_tokens: int | None,
                  count_tokens: TokenCounter | None = None) -> str | None:
    """Examples over the student's context are truncated by trainers, losing the answer: drop them."""
    if max_tokens is not None and approx_tokens(example, count_tokens) > max_tokens:
        return TOO_LONG
    return None


def pii_filter(example: dict[str, Any]) -> str | None:
    """For `pii_mode="drop"`: an example carrying personal data is left out rather than redacted."""
    for message in example.get("messages", []):
        if any(contains_pii(text) for text in message_strings(message)):
            return PII
    return None
