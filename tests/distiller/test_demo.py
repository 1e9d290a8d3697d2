"""`protege demo` at a tiny size: real model server (tiny random Llama), real gateway, real training.

The teacher is llm-katan's echo server, through the demo's hosted-teacher path: the random tiny model
never ends an answer within max_tokens, and curation drops truncated answers, so as a teacher it would
leave nothing to distil. A random student cannot pass the gate either, so the replay goes to the
teacher; what is checked is the plumbing: every phase ran, every held-out request got an answer, and
the report agrees with the store and with /metrics.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import random
from collections import Counter
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from distiller.demo.report import Prices
from distiller.demo.run import DemoOptions, demo_options, run_demo
from distiller.demo.workload import SYSTEM_PROMPT, TASK, UNUSUAL_KINDS, build_workload, expected_fields, unusual_ticket
from distiller.sufficiency import Minimums
from gateway.store import Exchange, open_store
from tests.servers import Server


def test_workload_is_deterministic_varied_and_mostly_copying() -> None:
    workload = build_workload(300, seed=0)
    assert workload == build_workload(300, seed=0)
    assert build_workload(300, seed=1).tickets != workload.tickets
    assert (len(workload.train), len(workload.held_out)) == (240, 60)
    assert len({t.message for t in workload.tickets}) == 300
    regular_tickets = [t for t in workload.tickets if t.kind == "regular"]
    assert len({t.fields["order_id"] for t in regular_tickets}) == len(regular_tickets) == 285
    assert len(build_workload().held_out) == 48  # the default size: 240 tickets
    assert 250 <= len(SYSTEM_PROMPT) / 4 <= 400  # about 250-400 tokens
    # a quarter of the held-out part is unlike anything in training, every unusual kind in turn
    assert {t.kind for t in workload.train} == {"regular"}
    unusual = Counter(t.kind for t in workload.held_out if t.kind != "regular")
    assert sum(unusual.values()) == 15 and set(unusual) == set(UNUSUAL_KINDS)  # 15 of 60, kinds in turn
    assert min(unusual.values()) == 3
    regular = build_workload(300, seed=0, unusual_fraction=0)
    assert [t for t in regular.held_out if t in workload.held_out] == [t for t in workload.held_out
                                                                       if t.kind == "regular"]
    with pytest.raises(ValueError, match="unknown ticket kind"):
        unusual_ticket("poetry", random.Random(0), "12345")
    for ticket in (t for t in workload.tickets if t.kind == "regular"):
        assert expected_fields(ticket.message) == ticket.fields
        content = workload.messages(ticket)[1]["content"]
        assert expected_fields(content) == ticket.fields
        assert all(value.casefold() in content.casefold() for value in ticket.fields.values())
    held_regular = [t for t in workload.held_out if t.kind == "regular"]
    assert len(Counter(t.fields["city"] for t in held_regular)) >= 8  # a majority answer stays weak
    assert len(Counter(t.fields["product"] for t in held_regular)) >= 8


async def _rows(store_url: str, task: str = TASK) -> list[Exchange]:
    store = open_store(store_url)
    await store.open()
    try:
        return await store.list_exchanges(task=task)
    finally:
        await store.close()


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_reports_what_the_store_says(katan: Server, tiny_model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream-secret-123456")  # a hosted teacher's key comes from the env
    options = DemoOptions(requests=24, epochs=1, max_steps=2, max_tokens=8, concurrency=4, runs_dir=tmp_path / "runs",
                          teacher="openai/echo-model", teacher_api_base=f"{katan.url}/v1",
                          teacher_price=Prices.per_million(0.15, 0.60), base_model=str(tiny_model), threads=1,
                          minimums=Minimums(train=8, validation=2, test=1))  # 24 tickets: a small world
    report = run_demo(options, console=Console(file=io.StringIO()))

    run_dir = Path(report.run_dir)
    assert (run_dir / "report.md").read_text().startswith("# Protégé demo")
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["sizes"] == {"requests": 24, "train": 19, "held_out": 5, "captured_ok": 19}
    # every price says where it comes from: the teacher's was given, the student's is compute time over the
    # throughput its server measured
    assert saved["prices"]["teacher"]["source"] == "given"
    student_source = saved["prices"]["student"]["source"]
    assert student_source.startswith("compute: cpu_hour_usd 0.1 (assumed (default)) over ")
    assert "tokens/s (measured by the model server)" in student_source
    assert "(compute: cpu_hour_usd 0.1" in (run_dir / "report.md").read_text()
    # one of the five held-out tickets is unusual, and the report breaks the replay down by kind
    kinds = saved["held_out"]["by_kind"]
    assert sum(k["n"] for k in kinds.values()) == 5 and set(kinds) == {"regular", UNUSUAL_KINDS[0]}
    assert kinds[UNUSUAL_KINDS[0]]["n"] == 1
    assert saved["distill_evaluation"]["student"]["score"]["n"] > 0
    names = [b["name"] for b in saved["distill_evaluation"]["baselines"]]
    assert names[0].startswith("base model") and names[-1] == "majority answer"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (run_dir / "cumulative_cost.png").stat().st_size > 1000

    # every held-out request got an answer, in both passes
    held = report.held_out
    assert held["n"] == 5 and held["errors"] == 0 and held["reference_errors"] == 0
    assert report.parity["served"] is not None and report.parity["served"]["n"] == 5
    assert report.parity["majority_answer"] is not None

    # a random student fails the gate: not promoted, so the replay stayed with the teacher
    assert report.student_status == "rejected" and not report.promoted
    assert held["routes"] == {"teacher": 5} and held["student_share"] == 0

    # the report matches the store and /metrics
    rows = asyncio.run(_rows(f"sqlite:///{run_dir / 'store.db'}"))
    assert len(rows) == 19 + 5 + 5 and all(r.status == "ok" for r in rows)
    assert Counter(r.route for r in rows) == {"teacher": 29}
    consistency = report.consistency
    assert consistency["routes_from_headers"] == consistency["routes_in_store"] == consistency["routes_in_metrics"]
    assert consistency["store_rows"] == {"capture": 19, "teacher_pass": 5, "replay": 5}
    assert consistency["cost_store_matches_metrics"] is True
    teacher_pass = rows[19:24]  # oldest first: the capture, the teacher pass, the replay
    assert report.cost["teacher_only_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in teacher_pass))
    assert report.cost["teacher_only_usd"] > 0
    assert report.tokens["teacher_only_input_per_request"] == pytest.approx(
        sum(r.prompt_tokens or 0 for r in teacher_pass) / 5, abs=0.01)

    # every child process is gone
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


@pytest.mark.slow
def test_demo_runs_the_free_text_task_on_the_similarity_scorer(katan: Server, tiny_model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`support-replies` at a tiny size: no JSON format and no stop sequence in its requests, the similarity
    scorer chosen from the teacher's free text, its scale and labelled check set in the report, and the held-out
    replay scored on the same scale (the random student is rejected: no shadow comparisons to report)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream-secret-123456")
    options = demo_options("support-replies", requests=40, epochs=1, max_steps=1, max_tokens=8, concurrency=4,
                           validation_fraction=0.3,
                           runs_dir=tmp_path / "runs", teacher="openai/echo-model",
                           teacher_api_base=f"{katan.url}/v1", teacher_price=Prices.per_million(0.15, 0.60),
                           base_model=str(tiny_model), threads=1, charts=False,
                           minimums=Minimums(train=8, validation=2, test=1))
    report = run_demo(options, console=Console(file=io.StringIO()))

    assert report.task == "support-replies" and report.settings["stop"] is None
    assert report.sizes == {"requests": 40, "train": 32, "held_out": 8, "captured_ok": 32}
    rows = asyncio.run(_rows(f"sqlite:///{Path(report.run_dir) / 'store.db'}", "support-replies"))
    assert len(rows) == 32 + 8 + 8
    assert all("response_format" not in r.request and "stop" not in r.request for r in rows)
    # the scorer: similarity, chosen from the teacher's free text, on a scale measured in this run
    scorer = report.scorer or {}
    assert scorer["kind"] == "similarity" and scorer["chosen_by"] == "auto: free text"
    assert scorer["scale"]["same"] > scorer["scale"]["other"]
    assert scorer["check"]["items"] == 56 and 0 <= scorer["check"]["accuracy"] <= 1
    names = [b["name"] for b in (report.distill_evaluation or {})["baselines"]]
    assert names[0].endswith("without the task's system prompt") and names[-1].startswith("random answer")
    markdown = (Path(report.run_dir) / "report.md").read_text()
    assert "scorer: **similarity** (auto: free text)" in markdown
    assert "accuracy on the labelled check set (56 items)" in markdown
    assert "### The system prompt's rules" in markdown and "fields right" not in markdown
    # the replay, scored on the similarity scale: the rejected student left it to the teacher
    assert report.student_status == "rejected" and report.held_out["routes"] == {"teacher": 8}
    assert report.parity["served"] is not None and report.parity["served"]["n"] == 8
    assert report.parity["majority_answer"] is not None and report.shadow is None
    assert report.rule_checks is not None and len(report.rule_checks) == 4
    assert report.consistency["cost_store_matches_metrics"] is True
    assert report.consistency["store_rows"] == {"capture": 32, "teacher_pass": 8, "replay": 8}
