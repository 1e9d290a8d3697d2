"""The loop's first half end to end: traffic captured through the gateway from a real upstream — half through
Chat Completions, half through the Responses API, into one task — then `protege distill` curates it, trains a LoRA
student (tiny Llama), evaluates and registers it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import yaml

from distiller.costs import ASSUMED_STUDENT_COST
from tests.conftest import teacher_flags
from tests.servers import Server, stop
from tests.stores import captured

TASK = "tickets-e2e"
SYSTEM = "You are a support triage assistant. Read the ticket and extract the city and the product."
CITIES = ["Oslo", "Paris", "Lima", "Kyiv", "Izmir", "Quito", "Accra", "Hanoi"]
PRODUCTS = ["blender", "kettle", "router", "desk lamp", "bicycle", "printer", "camera", "phone case", "jacket"]
PROBLEMS = ["arrived broken", "never arrived", "is the wrong colour", "stopped working after a week",
            "was charged twice", "came without its manual", "is missing a part"]


# these tests train on a few dozen exchanges for speed: below the distiller's default minimum split sizes
SMALL_DATA = ("--min-train", "8", "--min-validation", "2", "--min-test", "2")


def tickets(count: int) -> list[str]:
    return [f"Ticket {i}: my {PRODUCTS[i % len(PRODUCTS)]} shipped to {CITIES[(i * 3) % len(CITIES)]} "
            f"{PROBLEMS[(i * 5) % len(PROBLEMS)]}, order number {1000 + i * 37}." for i in range(count)]


async def send_all(url: str, texts: list[str]) -> None:
    """Even tickets through Chat Completions, odd ones through the Responses API (`instructions` is the system
    prompt): one task, one dataset."""
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        def ask(i: int, ticket: str) -> Any:
            if i % 2:
                return client.responses.create(model="gpt-4o-mini", instructions=SYSTEM, input=ticket,
                                               extra_headers={"X-Protege-Task": TASK})
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket}]
            return client.chat.completions.create(model="gpt-4o-mini", messages=messages,  # type: ignore[arg-type]
                                                  extra_headers={"X-Protege-Task": TASK})
        for chunk in range(0, len(texts), 8):
            await asyncio.gather(*(ask(i, t) for i, t in enumerate(texts[chunk:chunk + 8], chunk)))


def run_distill(store: Path, runs: Path, *flags: str, env: dict[str, str] | None = None,
                timeout: float = 600) -> dict[str, object]:
    """`protege distill --task TASK --json` as a subprocess; its JSON summary."""
    out = subprocess.run([sys.executable, "-m", "protege", "distill", "--task", TASK, "--store",
                          f"sqlite:///{store}", "--runs-dir", str(runs), "--json", *flags],
                         capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout))


def teacher_config(path: Path, upstream: Server, model: str = "openai/gpt-4o-mini",
                   embeddings: Server | None = None) -> Path:
    """The gateway's teacher as a config file, for the distiller: the similarity scorer asks it again (and
    `embeddings`, a model server, embeds the answers: a hosted student has no model server of its own)."""
    settings: dict[str, object] = {"teachers": [{"model": model, "api_base": f"{upstream.url}/v1",
                                                 "api_key": "sk-upstream-secret-123456"}]}
    if embeddings is not None:
        settings["scoring"] = {"embeddings_api_base": f"{embeddings.url}/v1"}
    path.write_text(yaml.safe_dump(settings))
    return path


def distill(store: Path, tiny_model: Path, runs: Path, config: Path) -> dict[str, object]:
    # one torch thread for training and the embedded model server: two threads on two shared cores crawl
    # a random model writes until max_tokens: 16 tokens an answer are enough to score it
    return run_distill(store, runs, "--config", str(config), "--base-model", str(tiny_model), "--epochs", "1",
                       "--max-steps", "3", "--max-eval-tokens", "16", *SMALL_DATA, env={"OMP_NUM_THREADS": "1"})


def test_capture_then_distill_registers_an_evaluated_student(
        katan: Server, gateway_factory: Callable[..., Server], tiny_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    gateway = gateway_factory(*teacher_flags(katan, store))
    asyncio.run(send_all(gateway.url, tickets(64)))
    stop(gateway.proc)
    rows = captured(store, task=TASK)
    assert len(rows) == 64 and {tuple(m["role"] for m in r.request["messages"]) for r in rows} == {("system", "user")}

    config = teacher_config(tmp_path / "protege.yaml", katan)
    first = distill(store, tiny_model, tmp_path / "runs", config)
    assert first["version"] == 1 and first["reused"] is False
    # a few steps on a random tiny model cannot reach the gate: registered, but rejected
    assert first["status"] == "rejected" and "below the gate" in str(first["gate"])
    run_dir = Path(str(first["run_dir"]))
    report = json.loads((run_dir / "report.json").read_text())
    names = [b["name"] for b in report["evaluation"]["baselines"]]
    # free text (llm-katan echoes): the similarity scorer, on a scale measured by asking the teacher again
    scorer = report["evaluation"]["scorer"]
    assert scorer["kind"] == "similarity" and scorer["chosen_by"] == "auto: free text"
    assert scorer["reference"]["teacher"] == "gpt-4o-mini" and scorer["reference"]["answered"] >= 2
    assert scorer["scale"]["same"] > scorer["scale"]["other"] and scorer["check"]["items"] == 56
    assert names[-2] == "majority answer" and names[-1].startswith("random answer") and names[0].startswith("base")
    # prompt-distilled: the base model as the student is asked (without the prompt), then with the prompt
    assert names[0].endswith("without the task's system prompt") and names[1].endswith("with the task's system prompt")
    assert report["evaluation"]["student"]["score"]["n"] > 0
    # the answers behind the score, kept for the console: one per test example, with the captured request's id
    examples = report["evaluation"]["examples"]
    assert len(examples) == report["evaluation"]["student"]["score"]["n"]
    assert all(e["request_id"] and e["request"] and e["teacher"] and 0 <= e["score"] <= 1 for e in examples)
    manifest = json.loads((run_dir / "dataset" / "manifest.json").read_text())
    assert manifest["system_prompt_hash"] is not None  # one shared system prompt: prompt-distilled
    train = (run_dir / "dataset" / "train.jsonl").read_text()
    assert SYSTEM not in train and "Ticket" in train
    assert (run_dir / "dataset" / "system_prompt.txt").read_text() == SYSTEM
    markdown = (run_dir / "report.md").read_text()
    # the curve's cost column: the student's own tokens at its compute price (its server's measured throughput)
    # over what the teacher's answers to the same requests cost
    calibration = report["calibration"]
    assert calibration["student_cost_source"].startswith(
        "measured: the student's validation tokens at compute: cpu_hour_usd 0.1 (assumed (default)) over ")
    assert "tokens/s (measured by the model server)" in calibration["student_cost_source"]
    # measured, not the assumed default; its size follows this machine's throughput (a busy CI core serves a
    # tiny model slower than a teacher is priced, so no bound on it is asserted here)
    assert calibration["student_cost"] > 0 and calibration["student_cost"] != ASSUMED_STUDENT_COST
    assert f"a student request costing {calibration['student_cost']:.4g} of a teacher's (measured" in markdown
    # the pre-generation predictor, fitted on the validation outcomes at the calibrated threshold when there is one,
    # and reported with why it is on or off
    predictor = report["predictor"]
    if calibration["threshold"] is None:
        assert predictor is None
    else:
        assert predictor["reason"].startswith(("on:", "off:", "not fitted:")) and "vocabulary" not in predictor
        assert "## Pre-generation predictor" in markdown
    assert (run_dir / "training" / "adapter" / "adapter_config.json").exists()

    second = distill(store, tiny_model, tmp_path / "runs", config)
    assert second["reused"] is True and second["dataset_hash"] == first["dataset_hash"]
    assert second["version"] == 1

    listing = json.loads(subprocess.run([sys.executable, "-m", "protege", "students", "--store",
                                         f"sqlite:///{store}", "--json"], capture_output=True, text=True,
                                        check=True).stdout)
    [student] = listing
    assert student["status"] == "rejected" and student["prompt_distilled"] is True
    assert student["evaluation"]["student"]["score"]["n"] > 0
    # what the run cost, and how each figure was made
    costs = student["costs"]
    assert costs["training_usd"] > 0 and costs["evaluation_usd"] > 0 and costs["data_usd"] > 0
    assert costs["sources"]["training"].startswith("measured ") and "on cpu × cpu_hour_usd 0.1, assumed" in \
        costs["sources"]["training"]
    assert costs["sources"]["data"].startswith("measured: the served cost of ")
