"""The LLM judge against a real process that answers as a judge (`judge_server`), asked through the gateway's
own teacher provider: verdicts both ways round, position bias cancelled, caching (in memory and on disk),
metering and pricing, and a judge that fails or talks nonsense never passing a student."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from gateway.chat.bodies import upstream_body
from gateway.config import Settings, TeacherConfig
from gateway.pricing import Price
from gateway.providers import ChatProvider, build_provider
from gateway.providers.base import redactor
from gateway.scoring import Comparison
from gateway.scoring.judge import JudgeCache, JudgeModel, JudgeScorer, parse_verdict, read_prompt
from tests.servers import Server, start_fake_service, stop

REQUEST = [{"role": "system", "content": "Sign off with 'Best regards, Northwind'."},
           {"role": "user", "content": "My parcel is late."}]
GOOD = {"role": "assistant", "content": "Sorry about the delay; it ships today. Best regards, Northwind"}
PLAIN = {"role": "assistant", "content": "Sorry about the delay; it ships today."}
WRONG = {"role": "assistant", "content": "WRONG: your parcel was never ordered. Best regards, Northwind"}
PRICE = Price(2e-6, 8e-6, source="configured")
OPENED: list[ChatProvider] = []  # the providers `scorer` made, closed after each test


@pytest.fixture(autouse=True)
async def providers_closed() -> AsyncIterator[None]:
    yield
    while OPENED:
        await OPENED.pop().aclose()


def judge_server(tmp_path: Path, rule: str) -> Server:
    return start_fake_service("tests.gateway.scoring.judge_server", tmp_path, "--rule", rule, what="judge")


@pytest.fixture
def quality_judge(tmp_path: Path) -> Iterator[Server]:
    server = judge_server(tmp_path, "quality")
    yield server
    stop(server.proc)


def scorer(server: Server, cache: JudgeCache | None = None, key: str = "judge-key") -> JudgeScorer:
    teacher = TeacherConfig(model="openai/judge-model", api_base=f"{server.url}/v1", api_key=SecretStr(key))
    provider = build_provider(teacher, Settings(), redactor([key]))
    OPENED.append(provider)

    async def complete(body: dict[str, object]) -> dict[str, object]:
        return await provider.complete(upstream_body(dict(body), teacher.upstream_model))

    return JudgeScorer(JudgeModel("judge-model", complete, teacher.upstream_model, PRICE),
                       cache=cache or JudgeCache())


def calls(server: Server) -> int:
    return int(httpx.get(f"{server.url}/stats", timeout=5).json()["calls"])


async def test_verdicts_both_ways_round(quality_judge: Server) -> None:
    judge = scorer(quality_judge)
    worse, same, better = await judge.score([Comparison(REQUEST, WRONG, GOOD), Comparison(REQUEST, GOOD, GOOD),
                                                 Comparison(REQUEST, GOOD, PLAIN)])
    assert worse.value == 0.0 and worse.details is not None and worse.details["consistent"] is True
    assert [o["student"] for o in worse.details["orders"]] == ["loss", "loss"]
    assert same.value == 1.0 and [o["verdict"] for o in (same.details or {})["orders"]] == ["tie", "tie"]
    assert better.value == 1.0 and [o["student"] for o in (better.details or {})["orders"]] == ["win", "win"]
    assert worse.rationale is not None and "teacher first: A scores 1, B scores -2" in worse.rationale
    # two per comparison, the order swapped; two identical answers make one question, asked once
    assert calls(quality_judge) == 5 and judge.usage.cached == 1
    assert judge.usage.calls == 5 and judge.usage.failed == 0 and judge.usage.prompt_tokens > 5 * 50
    expected = PRICE.cost(judge.usage.prompt_tokens, judge.usage.completion_tokens)
    assert judge.usage.cost_usd == pytest.approx(expected) and judge.usage.price_source == "configured"


async def test_swapping_cancels_position_bias(tmp_path: Path) -> None:
    """A judge that always prefers the first answer: the wrong answer is no longer 0, the good one no longer 1:
    each gets 0.5 and is marked inconsistent, which the check set's swap consistency reports."""
    server = judge_server(tmp_path, "first")
    try:
        wrong, good = await scorer(server).score([Comparison(REQUEST, WRONG, GOOD),
                                                      Comparison(REQUEST, GOOD, PLAIN)])
    finally:
        stop(server.proc)
    assert wrong.value == good.value == 0.5
    assert wrong.details is not None and wrong.details["consistent"] is False


async def test_verdicts_are_cached_in_memory_and_on_disk(quality_judge: Server, tmp_path: Path) -> None:
    cache_file = tmp_path / "judge-cache.jsonl"
    judge = scorer(quality_judge, JudgeCache(cache_file))
    first = await judge.score([Comparison(REQUEST, WRONG, GOOD)])
    again = await judge.score([Comparison(REQUEST, WRONG, GOOD)])
    assert first == again and calls(quality_judge) == 2 and judge.usage.cached == 2
    reread = scorer(quality_judge, JudgeCache(cache_file))  # a later run: the file answers, nothing is paid again
    assert await reread.score([Comparison(REQUEST, WRONG, GOOD)]) == first
    assert calls(quality_judge) == 2 and reread.usage.calls == 0 and reread.usage.cost_usd == 0
    await reread.score([Comparison(REQUEST, PLAIN, GOOD)])  # a different answer is a different question
    assert calls(quality_judge) == 4


async def test_a_judge_without_a_verdict_never_passes_a_student(tmp_path: Path) -> None:
    server = judge_server(tmp_path, "garbage")
    try:
        judge = scorer(server)
        [score] = await judge.score([Comparison(REQUEST, GOOD, PLAIN)])
        await judge.score([Comparison(REQUEST, GOOD, PLAIN)])
        assert score.value == 0.0 and judge.usage.failed == 4 and calls(server) == 4  # not cached: asked again
        refused = scorer(server, key="not-the-key")  # the judge's provider refuses: a failure, not a crash
        [denied] = await refused.score([Comparison(REQUEST, GOOD, PLAIN)])
        assert denied.value == 0.0 and refused.usage.failed == 2 and "judge failed" in (denied.rationale or "")
    finally:
        stop(server.proc)


async def test_an_empty_student_answer_scores_zero_without_a_call(quality_judge: Server) -> None:
    [score] = await scorer(quality_judge).score([Comparison(REQUEST, {"role": "assistant", "content": ""}, GOOD)])
    assert score.value == 0.0 and calls(quality_judge) == 0


def test_parse_verdict_and_prompt_file(tmp_path: Path) -> None:
    assert parse_verdict('{"rationale": "r", "verdict": "b"}') == ("B", "r")
    assert parse_verdict('Sure! {"verdict": "TIE", "rationale": "same"} hope that helps') == ("tie", "same")
    assert parse_verdict("verdict: A because it is polite")[0] == "A"
    assert parse_verdict("no idea")[0] is None
    assert parse_verdict(' "A"\n')[0] == "A" and parse_verdict("**tie**")[0] == "tie"  # a verdict alone
    assert parse_verdict("A lot of both")[0] is None
    mine = tmp_path / "prompt.md"
    mine.write_text("Judge {{request}} between {{answer_a}} and {{answer_b}}.")
    assert read_prompt(mine).startswith("Judge")
    mine.write_text("Judge {{request}} and {{answer_a}} only.")
    with pytest.raises(ValueError, match="answer_b"):
        read_prompt(mine)
