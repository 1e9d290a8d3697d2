"""The free-text demo workload (`support-replies`) and the demo's shadow-scoring figures, without processes."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from distiller.demo.render import to_markdown
from distiller.demo.report import Answer, DemoReport, MetricsSnapshot
from distiller.demo.run import DemoOptions, demo_options
from distiller.demo.scoring import PairScores, measure_pairs, shadow_summary, wait_for_shadow
from distiller.demo.support_replies import (
    KINDS,
    SYSTEM_PROMPT,
    TASK,
    UNUSUAL_KINDS,
    build_workload,
    reply_checks,
    unusual_ticket,
)
from distiller.demo.tasks import TASKS, demo_task
from gateway.scoring import Comparison, Score, ScorerKind
from gateway.store import Exchange, ExchangeExtra, ShadowNote


def test_workload_is_deterministic_varied_and_held_out_has_unusual_requests() -> None:
    workload = build_workload(300, seed=0)
    assert workload == build_workload(300, seed=0)
    assert build_workload(300, seed=1).tickets != workload.tickets
    assert workload.task == TASK == "support-replies"
    assert (len(workload.train), len(workload.held_out)) == (240, 60)
    assert len({t.message for t in workload.tickets if t.kind in KINDS}) == 285
    assert len({workload.messages(t)[1]["content"] for t in workload.tickets}) == 300
    ids = [t.order_id for t in workload.tickets if t.order_id]  # a question before ordering has none
    assert len(set(ids)) == len(ids) == 300 - sum(t.kind == "no-order" for t in workload.tickets)
    question = next(t for t in workload.held_out if t.kind == "no-order")
    assert workload.messages(question)[1]["content"] == f"Message from {question.name}: {question.message}\nReply:"
    assert 300 <= len(SYSTEM_PROMPT) / 4 <= 500  # a long prompt: about 400 tokens (characters / 4)
    # every request kind, in even measure, and many names and products: a majority answer stays weak
    kinds = Counter(t.kind for t in workload.train)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 45
    assert len({t.name for t in workload.train}) >= 150
    assert len({t.product for t in workload.train}) >= 15
    assert len({t.message.split(":")[0] for t in workload.train}) >= 20  # phrasings vary
    # a quarter of the held-out part is unlike anything in training, every unusual kind in turn
    unusual = Counter(t.kind for t in workload.held_out if t.kind not in KINDS)
    assert sum(unusual.values()) == 15 and set(unusual) == set(UNUSUAL_KINDS) and min(unusual.values()) == 3
    regular = build_workload(300, seed=0, unusual_fraction=0)
    assert [t for t in regular.held_out if t in workload.held_out] == [t for t in workload.held_out
                                                                       if t.kind in KINDS]
    # the help desk's ticket: the customer's name and order number, then the message, then the cue
    ticket = workload.train[0]
    system, user = workload.messages(ticket)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["content"] == f"Message from {ticket.name} about order {ticket.order_id}: {ticket.message}\nReply:"
    # the prompt's example values never occur in the tickets
    assert not any(name in t.name for t in workload.tickets for name in ("Maria", "Tom ", "Ana ", "Ravi"))
    with pytest.raises(ValueError, match="unknown ticket kind"):
        unusual_ticket("poetry", random.Random(0), "A B", "12345")
    with pytest.raises(ValueError, match="requests"):
        build_workload(1)


def test_reply_checks_read_the_prompts_rules() -> None:
    ticket = build_workload(20).train[0]
    good = (f"Dear {ticket.first_name}, thank you for writing about your {ticket.product}, order {ticket.order_id}. "
            "A free replacement ships within 2 business days. Warm regards, Nora")
    assert all(reply_checks(good, ticket).values())
    assert not any(reply_checks("I'm sorry for any inconvenience.", ticket).values())
    assert not any(reply_checks(None, ticket).values())


def test_demo_options_take_the_tasks_defaults_and_the_json_task_keeps_its_own() -> None:
    assert set(TASKS) == {"support-extract", "support-replies"}
    json_task = demo_options()
    assert json_task == DemoOptions()  # the JSON demo's defaults are unchanged
    assert json_task.stop_sequences() == ["\n"] and json_task.spec.json_answers
    assert json_task.spec.shadow_rate == 0 and not json_task.spec.keep_truncated
    replies = demo_options("support-replies", requests=None, epochs=5)
    assert (replies.requests, replies.max_tokens, replies.epochs, replies.test_fraction) == (360, 64, 5, 0.2)
    assert replies.stop_sequences() is None  # free text: no stop sequence
    assert not replies.spec.json_answers and replies.spec.keep_truncated and replies.spec.shadow_rate == 1.0
    assert replies.build_workload().task == "support-replies"
    with pytest.raises(ValueError, match="unknown demo task"):
        demo_task("poetry")


class _FakeScorer:
    """Scores by text length, counting the comparisons it was asked for."""

    def __init__(self) -> None:
        self.asked = 0

    @property
    def kind(self) -> ScorerKind:
        return "similarity"

    async def score(self, comparisons: Sequence[Comparison]) -> list[Score]:
        self.asked += len(comparisons)
        return [Score(min(1.0, len(str((c.student or {}).get("content") or "")) / 10)) for c in comparisons]


def test_pair_scores_measure_each_pair_once_and_default_to_json_fields() -> None:
    scorer = _FakeScorer()
    scores = asyncio.run(measure_pairs(scorer, [("abc", "x"), ("abc", "x"), (None, "x"), ("abcdefghijk", "y")]))
    assert scorer.asked == 3
    assert (scores("abc", "x"), scores(None, "x"), scores("abcdefghijk", "y")) == (0.3, 0.0, 1.0)
    fields = PairScores()
    assert fields('{"a": 1, "b": 2}', '{"a": 1, "b": 3}') == 0.5


def _row(request_id: str, route: str, *, agreement: float | None = None, version: int = 1,
         cost: float = 0.001) -> Exchange:
    extra = ExchangeExtra(shadow=ShadowNote(version, agreement)) if agreement is not None else ExchangeExtra()
    return Exchange(request_id=request_id, created_at=0.0, task=TASK, task_source="header", route=route,
                    model="m", upstream_model="m", status="ok", http_status=200, stream=False, request={},
                    cost_usd=cost, extra=extra)


class _Store:
    def __init__(self, rows: list[Exchange]) -> None:
        self.rows = rows

    async def list_exchanges(self, **_: Any) -> list[Exchange]:
        return self.rows


def test_shadow_summary_reads_live_parity_from_the_shadow_rows_and_the_counters() -> None:
    replayed = [Answer(i, f"r{i}", route, 1.0, "text") for i, route in enumerate(["student", "student", "fallback"])]
    rows = [_row("r0", "student"), _row("r0-shadow", "shadow", agreement=1.0), _row("r1-shadow", "shadow",
            agreement=0.5), _row("r2", "fallback"), _row("other-shadow", "shadow", agreement=0.0)]
    found = asyncio.run(wait_for_shadow(_Store(rows), TASK, replayed, rate=1.0))  # type: ignore[arg-type]
    assert [r.request_id for r in found] == ["r0-shadow", "r1-shadow"]  # only the replay's student answers
    metrics = MetricsSnapshot({
        ("protege_shadow_comparisons_total", (("task", TASK), ("version", "1"))): 2.0,
        ("protege_shadow_agreement_total", (("task", TASK), ("version", "1"))): 1.5,
        ("protege_cost_usd_total", (("route", "shadow"), ("task", TASK))): 0.002,
        ("protege_cost_usd_total", (("route", "student"), ("task", TASK))): 0.5})
    summary = shadow_summary(found, replayed, 1, 1.0, metrics)
    assert summary["student_answers"] == 2 and summary["comparisons"] == 2 and summary["shadow_rows"] == 2
    assert summary["live_parity"] == summary["metrics_live_parity"] == 0.75
    assert summary["ci_low"] <= 0.75 <= summary["ci_high"]
    assert summary["cost_usd"] == pytest.approx(summary["metrics_cost_usd"]) == pytest.approx(0.002)
    # not all there yet, with a rate under 1: waits until none has come for a while
    assert asyncio.run(wait_for_shadow(_Store(rows[:2]), TASK, replayed, rate=0.5,  # type: ignore[arg-type]
                                       quiet_s=0.1)) == rows[1:2]


def _report(**changes: Any) -> DemoReport:
    score = {"mean": 0.95, "ci_low": 0.9, "ci_high": 0.99, "n": 40}
    base: dict[str, Any] = dict(
        run_dir="/tmp/run", task=TASK, teacher="openai/t", student="s@v1", student_status="active",
        gate="parity 0.950 [0.910–0.990] passes the gate 0.90", promoted=True, settings={"unusual_fraction": 0.25},
        sizes={"requests": 50, "train": 40, "held_out": 10, "captured_ok": 40},
        prices={"teacher": {"input_usd_per_m": 0.15, "output_usd_per_m": 0.6},
                "student": {"input_usd_per_m": 0.1, "output_usd_per_m": 0.1}},
        timings_s={"total_s": 1.0}, curation={}, distill_evaluation=None, calibration=None,
        held_out={"n": 10, "routes": {"student": 8, "fallback": 2}, "fallback_reasons": {}, "by_kind": {},
                  "errors": 0, "student_share": 0.8, "fallback_rate": 0.2},
        parity={"served": score, "student_alone": score, "majority_answer": score},
        tokens={k: 1.0 for k in ("teacher_only_input_per_request", "protege_input_per_request",
                                 "student_input_per_request")},
        cost={"teacher_only_per_request_usd": 1e-4, "protege_per_request_usd": 1e-5, "saving": 0.9,
              "teacher_only_usd": 1e-3, "protege_usd": 1e-4, "metrics_teacher_only_usd": 1e-3,
              "metrics_protege_usd": 1e-4},
        latency_p50_s={"teacher_only": 1.0, "student": 0.5, "fallback": None, "teacher": None},
        consistency={"routes_in_store": {}, "routes_in_metrics": {}, "cost_store_matches_metrics": True},
        field_accuracy={"teacher": None, "protege": None},
        scorer={"kind": "similarity", "chosen_by": "auto: free text",
                "scale": {"same": 0.8, "other": 0.4, "pairs": 30, "source": "30 validation requests"},
                "reference": {"teacher_self_parity": 0.6},
                "check": {"items": 56, "accuracy": 0.75, "reject_all_accuracy": 0.714}},
        shadow={"rate": 1.0, "student_answers": 8, "shadow_rows": 8, "comparisons": 8, "live_parity": 0.9,
                "ci_low": 0.8, "ci_high": 0.97, "metrics_comparisons": 8, "metrics_live_parity": 0.9, "unscored": {},
                "cost_usd": 1e-4, "metrics_cost_usd": 1e-4},
        rule_checks={"signs off": {"teacher": 0.5, "protege": 0.4}})
    return DemoReport(**{**base, **changes})


def test_the_free_text_report_shows_its_scorer_live_parity_and_rules() -> None:
    evaluation = {"student": {"name": "student", "score": {"mean": 0.95, "ci_low": 0.91, "ci_high": 0.99, "n": 30}},
                  "baselines": [{"name": "base model without the task's system prompt",
                                 "score": {"mean": 0.3, "ci_low": 0.2, "ci_high": 0.4, "n": 30}}]}
    report = _report(distill_evaluation=evaluation)
    markdown = to_markdown(report)
    assert "scorer: **similarity** (auto: free text)" in markdown
    assert "similarity scale: cosine 0.800 → parity 1" in markdown
    assert "accuracy on the labelled check set (56 items): 0.750 (rejecting everything: 0.714)" in markdown
    assert "live parity 0.900 [0.800–0.970] (store rows; /metrics: 8 comparisons, parity 0.900)" in markdown
    assert "| live parity (shadow scoring of the student's answers) |  |  | 0.900 [0.800–0.970] (n=8) |" in markdown
    assert "| signs off | 0.50 | 0.40 |" in markdown and "fields right" not in markdown
    assert "on the scale the distiller measured" in markdown
    # the JSON task's report keeps its rows and words
    json_report = _report(task="support-extract", scorer={"kind": "fields", "chosen_by": "auto: JSON objects"},
                          shadow=None, rule_checks=None, field_accuracy={"teacher": 0.99, "protege": 0.98})
    markdown = to_markdown(json_report)
    assert "| fields right (vs the ticket) | 0.990 |  | 0.980 |" in markdown
    assert "(JSON field by field)" in markdown and "shadow" not in markdown
