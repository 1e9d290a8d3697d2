"""Bodies for the upstreams and the client: what the teacher and the student are sent, what the client gets of
a student's answer."""

from __future__ import annotations

from typing import Any

from gateway.store import StudentVersion


def upstream_body(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The request as the upstream should see it: its model name, without Protégé's metadata.task,
    and with usage requested on streams (the gateway needs it for cost; see `relay`)."""
    out = dict(body)
    out["model"] = upstream_model
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and "task" in metadata:
        rest = {k: v for k, v in metadata.items() if k != "task"}
        if rest:
            out["metadata"] = rest
        else:
            del out["metadata"]
    if out.get("stream"):
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True
        out["stream_options"] = options
    return out


_NOT_FOR_STUDENTS = frozenset({"stream", "stream_options", "reasoning_effort"})


def student_body(body: dict[str, Any], student: StudentVersion, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The request for the student: never streamed (it is judged whole), always with logprobs, and without a
    reasoning effort (a hint for the teacher's reasoning models)."""
    out = upstream_body({k: v for k, v in body.items() if k not in _NOT_FOR_STUDENTS}, student.model)
    out["messages"] = messages
    out["logprobs"] = True
    return out


def streamed(student_body: dict[str, Any]) -> dict[str, Any]:
    """The student's request as a stream (for early stop), with its usage in every chunk where the server can
    (vLLM's `continuous_usage_stats`, which Protégé's model server speaks too): a stopped answer is still billed
    for the tokens it used."""
    return {**student_body, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


def for_client(completion: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The student's answer as the client asked for it (logprobs only if requested)."""
    if request.get("logprobs"):
        return completion
    choices = [{k: v for k, v in c.items() if k != "logprobs"} for c in completion.get("choices") or []]
    return {**completion, "choices": choices}
