from __future__ import annotations

import pytest

from gateway.errors import BadRequestError
from gateway.tasks import fingerprint, resolve_task, system_prompt

MESSAGES = [{"role": "system", "content": "Classify tickets."}, {"role": "user", "content": "hi"}]


def test_header_beats_metadata_beats_fingerprint() -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "metadata": {"task": "meta"}}
    assert resolve_task("hdr", body) == ("hdr", "header")
    assert resolve_task(None, body) == ("meta", "metadata")
    task, source = resolve_task(None, {"model": "gpt-4o", "messages": MESSAGES})
    assert source == "fingerprint" and task == fingerprint("gpt-4o", "Classify tickets.")


def test_fingerprint_is_stable_and_depends_on_model_and_system_prompt() -> None:
    import hashlib

    assert fingerprint("gpt-4o", "a") == "t_" + hashlib.sha256(b"gpt-4o\x00a").hexdigest()[:12]
    assert fingerprint("gpt-4o", "a") == fingerprint("gpt-4o", "a")
    assert fingerprint("gpt-4o", "a") != fingerprint("gpt-4o", "b")
    assert fingerprint("gpt-4o", "a") != fingerprint("gpt-4o-mini", "a")
    # the user's message does not change the task
    other = [MESSAGES[0], {"role": "user", "content": "something else"}]
    same = resolve_task(None, {"model": "m", "messages": other})
    assert resolve_task(None, {"model": "m", "messages": MESSAGES}) == same


def test_system_prompt_reads_leading_system_and_developer_parts() -> None:
    messages = [{"role": "developer", "content": [{"type": "text", "text": "A"}, {"type": "image_url"}]},
                {"role": "system", "content": "B"}, {"role": "user", "content": "u"},
                {"role": "system", "content": "late"}]
    assert system_prompt(messages) == "A\nB"
    assert system_prompt([{"role": "user", "content": "u"}]) == ""


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "../etc", "é"])
def test_invalid_task_names_are_rejected(name: str) -> None:
    with pytest.raises(BadRequestError):
        resolve_task(name, {"model": "m", "messages": MESSAGES})
