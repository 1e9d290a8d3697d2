"""Routing decisions, pure and repeatable: rollout buckets, confidence scores, output validators,
accept-or-fall-back. No I/O here; `service.py` acts on what these functions decide."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError

from gateway.store import ConfidenceMethod, StudentVersion
from gateway.tasks import system_prompt, text_hash

FallbackReason = Literal["low_confidence", "validator", "student_error", "student_timeout"]
CONFIDENCE_QUANTILE = 0.1


def rollout_bucket(task: str, sticky_key: str) -> float:
    """sha256(task, key) mapped into [0, 1). Raising a percentage only adds keys below the new line."""
    digest = hashlib.sha256(f"{task}\x00{sticky_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_rollout(task: str, sticky_key: str, percent: float) -> bool:
    return rollout_bucket(task, sticky_key) < percent / 100


# --- confidence -------------------------------------------------------------------------------

def mean_logprob(logprobs: Sequence[float]) -> float:
    return sum(logprobs) / len(logprobs)


def min_logprob(logprobs: Sequence[float]) -> float:
    return min(logprobs)


def quantile_logprob(logprobs: Sequence[float], q: float = CONFIDENCE_QUANTILE) -> float:
    """The q-quantile (nearest rank, from the bottom) of the token logprobs."""
    ordered = sorted(logprobs)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


CONFIDENCE_METHODS = {"mean_logprob": mean_logprob, "min_logprob": min_logprob,
                      "quantile_logprob": quantile_logprob}


def token_logprobs(completion: dict[str, Any]) -> list[float]:
    """The sampled tokens' logprobs of the first choice (OpenAI's `logprobs.content` shape)."""
    choices = completion.get("choices") or [{}]
    content = ((choices[0].get("logprobs") or {}).get("content")) or []
    return [float(t["logprob"]) for t in content if isinstance(t, dict) and t.get("logprob") is not None]


def confidence(completion: dict[str, Any], method: ConfidenceMethod) -> float | None:
    """The answer's confidence score (a log-probability: ≤ 0, higher is surer); None without logprobs."""
    values = token_logprobs(completion)
    return CONFIDENCE_METHODS[method](values) if values else None


# --- validators -------------------------------------------------------------------------------

def validate_output(request: dict[str, Any], completion: dict[str, Any]) -> list[str]:
    """Why the answer breaks what the request asked for; [] when it is fine."""
    choice = (completion.get("choices") or [{}])[0]
    problems: list[str] = []
    if choice.get("finish_reason") == "length":
        problems.append("answer truncated (finish_reason length)")
    message = choice.get("message") or {}
    if not message.get("tool_calls") and not str(message.get("content") or "").strip():
        problems.append("answer is empty")
    fmt = request.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema") and not message.get("tool_calls"):
        problems += _check_json(message.get("content"), fmt)
    if message.get("tool_calls"):
        problems += _check_tool_calls(message["tool_calls"], request.get("tools") or [])
    return problems


def _check_json(content: Any, fmt: dict[str, Any]) -> list[str]:
    try:
        value = orjson.loads(content or "")
    except orjson.JSONDecodeError:
        return ["answer is not valid JSON"]
    if fmt.get("type") == "json_object":
        return [] if isinstance(value, dict) else ["answer is not a JSON object"]
    schema = (fmt.get("json_schema") or {}).get("schema")
    return _schema_errors(value, schema, "answer")


# A client's schema may hold any regular expression, and the student's output is matched against it on
# the event loop: with Python's `re`, a pattern like (a+)+$ on a long answer would stall every request.
# The `regex` engine takes a time budget; a pattern that runs past it fails the answer (the teacher answers).
PATTERN_BUDGET_S = 0.05


def _search(pattern: str, text: str) -> bool:
    try:
        return regex.search(pattern, text, timeout=PATTERN_BUDGET_S) is not None
    except TimeoutError:
        raise ValidationError(f"pattern {pattern[:60]!r} took longer than {PATTERN_BUDGET_S:g} s") from None
    except regex.error:
        return True  # an invalid pattern from the client is not the student's fault


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance[:80]!r} does not match {pattern[:60]!r}")


def _pattern_properties(validator: Any, properties: dict[str, Any], instance: Any, schema: Any) -> Any:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


BudgetedValidator = validators.extend(Draft202012Validator, {"pattern": _pattern,
                                                              "patternProperties": _pattern_properties})


def _schema_errors(value: Any, schema: Any, what: str) -> list[str]:
    if not isinstance(schema, dict):
        return []
    try:
        error = next(iter(BudgetedValidator(schema).iter_errors(value)), None)
    except SchemaError:
        return []  # an invalid schema from the client is not the student's fault
    except ValidationError as exc:  # a pattern ran out of time
        return [f"{what} could not be checked against the schema: {exc.message}"]
    return [] if error is None else [f"{what} does not match the schema: {error.message[:200]}"]


def _check_tool_calls(calls: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[str]:
    schemas = {t.get("function", {}).get("name"): t.get("function", {}).get("parameters") for t in tools}
    problems = []
    for call in calls:
        function = call.get("function") or {}
        name = function.get("name")
        if name not in schemas:
            problems.append(f"tool {name!r} does not exist")
            continue
        try:
            arguments = orjson.loads(function.get("arguments") or "")
        except orjson.JSONDecodeError:
            problems.append(f"arguments of tool {name!r} are not valid JSON")
            continue
        problems += _schema_errors(arguments, schemas[name], f"arguments of tool {name!r}")
    return problems


# --- applicability and decision ----------------------------------------------------------------

def student_messages(messages: list[dict[str, Any]], student: StudentVersion) -> list[dict[str, Any]] | None:
    """The messages to send the student, or None when it does not apply to this request.

    A prompt-distilled student was trained without its task's system prompt: the prompt is dropped
    when it is the one distilled, and a different system prompt means the student does not apply."""
    if not student.prompt_distilled:
        return messages
    system = system_prompt(messages)
    if not system or text_hash(system) != student.system_prompt_hash:
        return None
    return [m for m in messages[_leading_system_count(messages):]]


def _leading_system_count(messages: list[dict[str, Any]]) -> int:
    count = 0
    for message in messages:
        if message.get("role") not in ("system", "developer"):
            break
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class Verdict:
    accept: bool
    reason: FallbackReason | None
    detail: str = ""


def judge(confidence_score: float | None, threshold: float | None, problems: list[str]) -> Verdict:
    """Accept the student's answer when it passes the validators and its confidence reaches the threshold. A
    version without a threshold gets no routed traffic (`ChatService`); when it answers for a teacher that is
    down (degraded mode), it is judged on the validators alone."""
    if problems:
        return Verdict(False, "validator", "; ".join(problems))
    if threshold is not None and (confidence_score is None or confidence_score < threshold):
        return Verdict(False, "low_confidence", f"confidence {confidence_score} < threshold {threshold}")
    return Verdict(True, None)
