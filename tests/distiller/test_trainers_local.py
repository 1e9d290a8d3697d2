"""The trainer interface and the local LoRA backend: real training processes on the tiny Llama, the adapter
loaded into the real model server, restarts, kills and cancels; assistant-only labels on SmolLM2's template."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from distiller.dataset import CurationConfig, curate, write_dataset
from distiller.trainers import (
    JobStatus,
    LocalLoRAConfig,
    LocalLoRATrainer,
    Trainer,
    TrainerError,
    TrainingJob,
    TrainingResult,
    get_trainer,
)
from distiller.trainers.local import STATUS_FILE
from tests.distiller.conftest import make_exchange
from tests.servers import REPO, start_model_server, stop

WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "grape", "candle", "forest", "rocket", "garden",
         "silver", "window", "planet", "bridge", "castle", "dragon", "marble", "pepper", "violin", "jacket", "orange",
         "yellow")


def write_chat_dataset(out_dir: Path) -> dict[str, Any]:
    """24 tiny chats ("Spell apple backwards." → "elppa") through the real curation into a dataset folder:
    train/validation/test.jsonl with `metadata` on every line, and manifest.json. Returns the manifest."""
    exchanges = [make_exchange(i, f"Spell {word} backwards.", word[::-1]) for i, word in enumerate(WORDS)]
    dataset = curate(exchanges, CurationConfig(validation_fraction=0.15, test_fraction=0.1))
    return write_dataset(dataset, out_dir)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dataset")
    manifest = write_chat_dataset(path)
    assert manifest["counts"] == {"train": 18, "validation": 3, "test": 3}
    return path


def wait_done(job: TrainingJob, config: Any = None, timeout: float = 90, interval: float = 0.05) -> list[JobStatus]:
    """Poll until a final state, every time through a fresh trainer and a handle rebuilt from JSON (as a
    restarted distiller would). Returns every status seen."""
    saved = json.dumps(job.to_dict())
    seen: list[JobStatus] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = get_trainer(job.backend, config).poll(TrainingJob.from_dict(json.loads(saved)))
        seen.append(status)
        if status.done:
            return seen
        time.sleep(interval)
    raise TimeoutError(f"job {job.job_id} not done after {timeout} s; last status {seen[-1]}")


def wait_running(trainer: Trainer, job: TrainingJob, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = trainer.poll(job)
        if status.state == "running" and status.details.get("step", 0) >= 1:
            return
        assert not status.done, status
        time.sleep(0.05)
    raise TimeoutError(f"job {job.job_id} never started training")


# ------------------------------------------------------------------------------------------------- interface


def test_configs_handles_and_factory() -> None:
    help_text = LocalLoRAConfig.help()
    assert set(help_text) == {f for f in LocalLoRAConfig.__dataclass_fields__} and all(help_text.values())
    config = LocalLoRAConfig(r=8, target_modules=("q_proj", "k_proj"))
    assert LocalLoRAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown LocalLoRAConfig options"):
        LocalLoRAConfig.from_dict({"rank": 8})
    with pytest.raises(ValueError, match="device"):
        LocalLoRAConfig(device="tpu")

    trainer = get_trainer("local", {"epochs": 1})
    assert isinstance(trainer, LocalLoRATrainer) and trainer.config.epochs == 1
    assert isinstance(trainer, Trainer)
    with pytest.raises(ValueError, match="unknown trainer backend"):
        get_trainer("sagemaker")
    with pytest.raises(TypeError):
        get_trainer("openai", LocalLoRAConfig())

    job = TrainingJob(backend="local", job_id="lora-1", run_dir="/runs/1", details={"pid": 1, "config": {"r": 8}})
    assert TrainingJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    result = TrainingResult("/runs/1/adapter", "student-1", "base", {"val_loss": 1.0})
    assert TrainingResult.from_dict(JobStatus("succeeded", 1.0, result=result).to_dict()["result"]) == result
    with pytest.raises(ValueError, match="state"):
        JobStatus("done")  # type: ignore[arg-type]


def test_trainers_import_neither_torch_nor_openai() -> None:
    code = "import sys, distiller.trainers; print(sorted({'torch', 'openai'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_launch_refuses_bad_input(tmp_path: Path, dataset_dir: Path, tiny_model: Path) -> None:
    trainer = LocalLoRATrainer(LocalLoRAConfig(base_model=str(tiny_model)))
    with pytest.raises(TrainerError, match=r"no train\.jsonl"):
        trainer.launch(tmp_path / "missing", tmp_path / "run")
    with pytest.raises(TrainerError, match="not a transformers model folder"):
        LocalLoRATrainer(LocalLoRAConfig(base_model=str(tmp_path))).launch(dataset_dir, tmp_path / "run")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / STATUS_FILE).write_text("{}")
    with pytest.raises(TrainerError, match="already holds a training run"):
        trainer.launch(dataset_dir, tmp_path / "used")


# ------------------------------------------------------------------------------------------------- labels


def _labelled_spans(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    from distiller.trainers.lora_training import IGNORE

    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_loss_only_on_assistant_tokens() -> None:
    from distiller.trainers.lora_training import IGNORE, tokenize_example
    from model_server.model_loading import load_smollm2_tokenizer

    tokenizer = load_smollm2_tokenizer()
    example: dict[str, Any] = {"messages": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome, of course."},
    ], "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}
    item = tokenize_example(tokenizer, example, max_length=512)
    assert item is not None and not item.truncated
    assert item.input_ids == tokenizer(tokenizer.apply_chat_template(example["messages"], tokenize=False),
                                       add_special_tokens=False)["input_ids"]  # what the model server renders
    assert _labelled_spans(tokenizer, item.input_ids, item.labels) == ["Paris<|im_end|>", "Rome, of course.<|im_end|>"]
    unlabelled = tokenizer.decode([t for t, label in zip(item.input_ids, item.labels, strict=True) if label == IGNORE])
    assert "Answer in one word." in unlabelled and "Capital of France?" in unlabelled and "Paris" not in unlabelled

    example["messages"][2]["weight"] = 0  # OpenAI's per-turn switch
    item = tokenize_example(tokenizer, example, max_length=512)
    assert item is not None and _labelled_spans(tokenizer, item.input_ids, item.labels) == [
        "Rome, of course.<|im_end|>"]
    cut = tokenize_example(tokenizer, example, max_length=len(item.input_ids) - 3)  # drops ".", <|im_end|>, "\n"
    assert cut is not None and cut.truncated
    assert _labelled_spans(tokenizer, cut.input_ids, cut.labels) == ["Rome, of course"]
    assert tokenize_example(tokenizer, example, max_length=20) is None  # no assistant token left


def test_training_is_deterministic(tmp_path: Path, dataset_dir: Path, tiny_model: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from distiller.trainers.lora_training import train

    config = LocalLoRAConfig(base_model=str(tiny_model), batch_size=4, max_steps=2, threads=1, model_name="s")
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    records = [train(dataset_dir, tmp_path / name, config) for name in ("a", "b")]
    assert torch.get_num_threads() == threads and torch.random.get_rng_state().equal(rng)  # no side effects
    assert records[0]["epochs"] == records[1]["epochs"] and records[0]["steps"] == 2
    weights = [load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors")) for name in ("a", "b")]
    assert weights[0].keys() == weights[1].keys() and all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    assert any(key.endswith("lora_B.weight") and value.abs().sum() > 0 for key, value in weights[0].items())


# ------------------------------------------------------------------------------------------------- processes


def _chat(url: str, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "Spell apple backwards."}], "max_tokens": 6,
            "temperature": 0, "logprobs": True, "top_logprobs": 1}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    choice: dict[str, Any] = response.json()["choices"][0]
    assert choice["logprobs"]["content"]
    return choice


def test_local_training_end_to_end(tmp_path: Path, dataset_dir: Path, tiny_model: Path) -> None:
    config = LocalLoRAConfig(base_model=str(tiny_model), epochs=3, batch_size=2, learning_rate=5e-3, threads=1)
    started = time.monotonic()
    job = get_trainer("local", config).launch(dataset_dir, tmp_path / "run")
    assert job.backend == "local" and job.details["pid"] > 0 and TrainingJob.load(tmp_path / "run") == job
    with ThreadPoolExecutor(1) as pool:  # poll from the start while the model server starts
        polling = pool.submit(wait_done, job)
        server = start_model_server(tmp_path, "--model", str(tiny_model), "--served-model-name", "tiny",
                                    "--threads", "1")
    try:
        seen = polling.result()
        elapsed = time.monotonic() - started
        final = seen[-1]
        assert final.state == "succeeded", final
        progress = [status.progress for status in seen]
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert any(0 < p < 1 for p in progress), progress
        assert any(status.state == "running" and "step" in status.details for status in seen)
        assert final.result is not None
        adapter = Path(final.result.artifact)
        assert adapter == tmp_path / "run" / "adapter" and final.result.model_name == job.details["model_name"]
        files = {p.name for p in adapter.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "training.json"} <= files
        record = json.loads((adapter / "training.json").read_text())
        manifest = json.loads((dataset_dir / "manifest.json").read_text())
        assert record["dataset_hash"] == manifest["dataset_hash"] and record["base_model"] == str(tiny_model)
        assert record["steps"] == 27 and record["config"]["learning_rate"] == 5e-3
        assert record["val_loss"] < record["val_loss_before"]  # it learned something that generalises
        print(f"\ntiny LoRA: {elapsed:.1f} s launch → succeeded, {record['train_seconds']} s in the loop, "
              f"{record['steps_per_s']} steps/s, val loss {record['val_loss_before']:.3f} → {record['val_loss']:.3f}")

        loaded = httpx.post(f"{server.url}/v1/load_lora_adapter",
                            json={"lora_name": final.result.model_name, "lora_path": final.result.artifact}, timeout=60)
        assert loaded.status_code == 200, loaded.text
        base, student = _chat(server.url, "tiny"), _chat(server.url, final.result.model_name)
        assert student["message"]["content"] != base["message"]["content"]
        first = [answer["logprobs"]["content"][0]["logprob"] for answer in (base, student)]
        assert first[0] != pytest.approx(first[1], abs=1e-4)
    finally:
        stop(server.proc)
    assert "saved" in (tmp_path / "run" / "train.log").read_text()


def test_killed_cancelled_and_failing_jobs(tmp_path: Path, dataset_dir: Path, tiny_model: Path) -> None:
    """Three processes at once: one killed (→ failed), one cancelled (→ cancelled, written by the process
    itself), one whose dataset has nothing to learn (→ failed with the reason)."""
    slow = LocalLoRATrainer(LocalLoRAConfig(base_model=str(tiny_model), epochs=1000, batch_size=1, threads=1))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    killed, cancelled = slow.launch(dataset_dir, tmp_path / "killed"), slow.launch(dataset_dir, tmp_path / "cancelled")
    failing = slow.launch(empty, tmp_path / "failing")
    try:
        wait_running(slow, killed)
        os.kill(killed.details["pid"], signal.SIGKILL)
        status = wait_done(killed)[-1]
        assert status.state == "failed" and status.error and "exited without a final status" in status.error
        assert status.progress > 0

        wait_running(slow, cancelled)
        slow.cancel(cancelled)
        assert wait_done(cancelled)[-1].state == "cancelled"
        assert json.loads((tmp_path / "cancelled" / STATUS_FILE).read_text())["state"] == "cancelled"
        slow.cancel(cancelled)  # a second cancel is harmless

        status = wait_done(failing)[-1]
        assert status.state == "failed" and status.error and "assistant tokens" in status.error
        assert "Traceback" in (tmp_path / "failing" / "train.log").read_text()
    finally:
        for job in (killed, cancelled, failing):
            slow.cancel(job)


@pytest.mark.slow
def test_smollm2_lora_steps(tmp_path: Path, dataset_dir: Path) -> None:
    """A few LoRA steps on the real SmolLM2-135M-Instruct; the adapter loads onto it through the model
    server's adapter manager."""
    config = LocalLoRAConfig(batch_size=2, max_steps=4, threads=1)
    job = LocalLoRATrainer(config).launch(dataset_dir, tmp_path / "run")
    final = wait_done(job, timeout=240, interval=0.5)[-1]
    assert final.state == "succeeded", final
    assert final.result is not None and final.result.base_model == "smollm2-135m-instruct"
    metrics = final.result.metrics
    print(f"\nSmolLM2 LoRA: {metrics['steps']} steps (batch 2) in {metrics['train_seconds']} s = "
          f"{metrics['steps_per_s']} steps/s; val loss {metrics['val_loss_before']:.3f} → {metrics['val_loss']:.3f}")
    assert metrics["steps"] == 4 and metrics["val_loss"] < metrics["val_loss_before"]

    from model_server.adapters import AdapterManager
    from model_server.model_loading import load_default_model

    manager = AdapterManager(load_default_model().model)
    manager.load(final.result.model_name, Path(final.result.artifact))
    assert manager.paths == {final.result.model_name: final.result.artifact}
