"""The distiller's scorer set-up: which kind (flag > task config > traffic), which teacher answered the task,
and the embedded model asked as the judge through the distiller's own wiring against a real model server."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from distiller.scorers import choose_kind, embedded_teacher, judge_scorer, task_teacher, teacher_named
from gateway.config import EmbeddedConfig, JudgeConfig, Settings, TaskConfig, TeacherConfig
from gateway.embedded import EMBEDDED_MODEL_NAME
from gateway.scoring import Comparison
from tests.servers import start_model_server, stop

REPLY = {"role": "assistant", "content": "Hi Maria, sorry about the jug; a replacement ships in 2 days. Best regards"}


def test_the_kind_comes_from_the_flag_then_the_task_then_the_traffic() -> None:
    assert choose_kind([REPLY] * 4, TaskConfig(), None) == ("similarity", "auto: free text")
    assert choose_kind([REPLY] * 4, TaskConfig(scorer="exact"), None) == ("exact", "tasks.<task>.scorer")
    assert choose_kind([REPLY] * 4, TaskConfig(scorer="exact"), "fields") == ("fields", "--scorer")
    judged = TaskConfig(judge=JudgeConfig(teacher="gpt-4o"))
    assert choose_kind([REPLY] * 4, judged, "auto")[0] == "judge"


async def test_the_teacher_is_the_one_that_answered_the_task() -> None:
    a = TeacherConfig(model="openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key=SecretStr("k1"))
    b = TeacherConfig(model="anthropic/claude-sonnet-4-5", name="claude", api_key=SecretStr("k2"))
    two = Settings(teachers=[a, b])
    embedded = embedded_teacher("http://127.0.0.1:9/v1", "key", EmbeddedConfig())
    found = task_teacher(["claude-sonnet-4-5", "claude-sonnet-4-5", "gpt-4o-mini"], two, embedded)
    assert found is not None and found.config.served_name == "claude"
    only = task_teacher(["anything"], Settings(teachers=[a]), embedded)
    assert only is not None and only.config.served_name == "gpt-4o-mini"
    # no teacher configured: the embedded model only when it is what answered; otherwise nobody can say
    mine = task_teacher([f"openai/{EMBEDDED_MODEL_NAME}"], Settings(), embedded)  # as its rows record it
    assert mine is not None and mine.config.served_name == EMBEDDED_MODEL_NAME
    assert task_teacher(["gpt-4o-mini"], Settings(), embedded) is None
    assert teacher_named("claude", two, embedded) is not None and teacher_named("nobody", two, embedded) is None
    for teacher in (found, only, mine):
        await teacher.provider.aclose()


async def test_the_embedded_model_as_judge_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """A model server serving the embedded model's name (the tiny random Llama in its place) asked as judge:
    both orders are asked, each call is priced at the embedded model's simulated price, and a reply without a
    verdict — what a random model writes — fails closed and is not cached."""
    server = start_model_server(tmp_path, "--model", str(tiny_model), "--served-model-name", EMBEDDED_MODEL_NAME,
                                "--threads", "1")
    try:
        embedded = embedded_teacher(f"{server.url}/v1", None, EmbeddedConfig())
        teacher = teacher_named(EMBEDDED_MODEL_NAME, Settings(), embedded)
        assert teacher is not None
        judge = judge_scorer(JudgeConfig(teacher=EMBEDDED_MODEL_NAME, max_tokens=16), teacher,
                             tmp_path / "judge-cache.jsonl")
        plain = {"role": "assistant", "content": "Sorry about the jug."}
        [score] = await judge.score([Comparison([{"role": "user", "content": "My jug broke."}], plain, REPLY)])
        await teacher.provider.aclose()
    finally:
        stop(server.proc)
    usage = judge.usage
    assert usage.calls == 2 and usage.prompt_tokens > 100 and usage.completion_tokens > 0
    assert usage.cost_usd is not None and usage.cost_usd > 0 and usage.price_source == "configured"
    orders = (score.details or {})["orders"]
    assert [o["first"] for o in orders] == ["teacher", "student"]
    parsed = sum(o["verdict"] is not None for o in orders)
    assert usage.failed == 2 - parsed and 0.0 <= score.value <= 1.0
    cache = tmp_path / "judge-cache.jsonl"
    assert (len(cache.read_text().splitlines()) if cache.exists() else 0) == parsed  # only verdicts are kept
    if parsed < 2:  # a random model's reply without a verdict is not acceptable
        assert score.value <= 0.5
