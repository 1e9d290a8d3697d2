"""Evaluation: scores, bootstrap intervals, the majority baseline, and a run against a real model server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from distiller.evaluate import (
    EvalExample,
    bootstrap_ci,
    evaluate,
    load_split,
    majority_answer,
    majority_report,
)
from gateway.scoring import StructuralScorer
from tests.servers import start_model_server, stop

FIELDS = StructuralScorer("fields")


def example(content: str, user: str = "q") -> EvalExample:
    return EvalExample(messages=[{"role": "user", "content": user}],
                       reference={"role": "assistant", "content": content})


def test_bootstrap_interval_brackets_the_mean() -> None:
    scores = [1.0] * 80 + [0.0] * 20
    summary = bootstrap_ci(scores, seed=1)
    assert summary.mean == 0.8 and summary.n == 100
    assert 0.7 < summary.ci_low < 0.8 < summary.ci_high < 0.9
    assert bootstrap_ci(scores, seed=1) == summary  # deterministic
    assert bootstrap_ci([]).n == 0


def test_majority_answer_for_text_and_json() -> None:
    assert majority_answer([example("yes"), example("no"), example("yes")])["content"] == "yes"
    train = [example('{"queue": "billing", "urgent": false}'), example('{"queue": "billing", "urgent": true}'),
             example('{"queue": "tech", "urgent": false}')]
    assert json.loads(majority_answer(train)["content"]) == {"queue": "billing", "urgent": False}
    test = [example('{"queue": "billing", "urgent": false}'), example('{"queue": "tech", "urgent": true}')]
    report = asyncio.run(majority_report(FIELDS, train, test))
    assert report.score.mean == pytest.approx((1.0 + 0.0) / 2)


def test_majority_answer_ignores_a_few_answers_that_are_not_json() -> None:
    """One refusal among JSON answers: still the field-by-field majority of the JSON ones, not a whole text."""
    train = [example('{"queue": "billing", "urgent": true}'), example('{"queue": "billing", "urgent": false}'),
             example("Sorry, I cannot read this ticket."), example('{"queue": "tech", "urgent": false}')]
    assert json.loads(majority_answer(train)["content"]) == {"queue": "billing", "urgent": False}
    test = [example('{"queue": "billing", "urgent": false}'), example('{"queue": "tech", "urgent": true}'),
            example("Sorry, I cannot read this ticket.")]
    assert asyncio.run(majority_report(FIELDS, train, test)).score.mean == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_majority_answer_is_whole_text_when_almost_nothing_is_json() -> None:
    train = [example("yes"), example("yes"), example("no"), example('{"answer": "yes"}'), example("[1, 2]")]
    assert majority_answer(train)["content"] == "yes"
    assert majority_answer([example("[1, 2]"), example("[1, 2]"), example('{"a": 1}')])["content"] == "[1, 2]"
    assert majority_answer([])["content"] == ""


def test_majority_counts_answers_the_scorer_treats_as_equal() -> None:
    """Agreement compares normalised text (case, spacing), so the majority counts it that way too."""
    train = [example("Oslo"), example("oslo"), example(" OSLO\n"), example("Paris"), example("Paris")]
    assert majority_answer(train)["content"] == "Oslo"
    fields = [example('{"queue": "Billing"}'), example('{"queue": "billing "}'), example('{"queue": "BILLING"}'),
              example('{"queue": "tech"}'), example('{"queue": "tech"}')]
    assert json.loads(majority_answer(fields)["content"]) == {"queue": "Billing"}


def write_dataset(root: Path, answers: dict[str, list[str]]) -> Path:
    for split, contents in answers.items():
        lines = [json.dumps({"messages": [{"role": "user", "content": f"ticket {i}"},
                                          {"role": "assistant", "content": c}], "metadata": {"split": split}})
                 for i, c in enumerate(contents)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_evaluate_against_a_real_model_server(tiny_model: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path, {"train": ["Oslo", "Oslo", "Paris"], "test": ["Oslo", "Paris", "Oslo"]})
    assert [e.reference["content"] for e in load_split(dataset, "test")] == ["Oslo", "Paris", "Oslo"]
    server = start_model_server(tmp_path, "--model", str(tiny_model), "--served-model-name", "tiny", "--threads", "1")
    try:
        report, answers, scores = asyncio.run(evaluate(f"{server.url}/v1", scorer=FIELDS, student_model="tiny",
                                                       base_model="tiny", dataset_dir=dataset, max_tokens=8))
    finally:
        stop(server.proc)
    assert len(answers) == 3 and all(a.error is None and a.logprobs for a in answers)
    assert [s.value for s in scores] == [e.score for e in report.examples]
    assert report.student.score.n == 3 and report.student.score.mean == 0.0  # a random model never says "Oslo"
    assert report.student.latency_p50_s is not None and report.student.prompt_tokens_mean is not None
    names = [b.name for b in report.baselines]
    assert names == ["base model (tiny)", "majority answer"]
    assert report.baselines[1].score.mean == pytest.approx(2 / 3)  # "Oslo" for everyone
    markdown = report.to_markdown()
    assert "| majority answer | 0.667 |" in markdown and "student (tiny)" in markdown
    assert json.loads(json.dumps(report.to_dict()))["split"] == "test"
