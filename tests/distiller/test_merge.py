"""Merged-weights export: a LoRA adapter trained by the real trainer on the tiny Llama, folded into the base
with `merge_adapter`, computes the same logits as base + adapter, loads with the model server's loader, and
answers through a real `protege model-server --model OUT` exactly as the base model server with the adapter."""

from __future__ import annotations

import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from distiller.trainers import LocalLoRAConfig
from distiller.trainers.merge import MERGE_RECORD, MergeError, merge_adapter
from tests.distiller.test_trainers_local import write_chat_dataset
from tests.servers import start_model_server, stop

pytestmark = pytest.mark.slow  # trains (a few steps on the tiny model)

PROMPTS = ["Spell apple backwards.", "Spell rocket backwards.", "What is two plus two?"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A real adapter: the local LoRA trainer, in process, a few steps at a high learning rate so the
    adapter visibly changes the model."""
    from distiller.trainers.lora_training import train

    root = tmp_path_factory.mktemp("merge")
    write_chat_dataset(root / "dataset")
    config = LocalLoRAConfig(base_model=str(tiny_model), batch_size=4, max_steps=4, learning_rate=5e-2,
                             threads=1, model_name="s")
    train(root / "dataset", root / "run", config)
    return root / "run" / "adapter"


def _logits(model: Any, tokenizer: Any) -> Any:
    import torch

    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch).logits
    return out * batch["attention_mask"].unsqueeze(-1)  # padded positions are not compared


def test_merged_logits_equal_base_plus_adapter(tmp_path: Path, tiny_model: Path, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from model_server.model_loading import load_model_dir

    out = merge_adapter(tiny_model, adapter, tmp_path / "merged")
    assert out == tmp_path / "merged"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", MERGE_RECORD} <= files
    assert not any(name.startswith("adapter") for name in files)  # a plain model, no LoRA left
    assert not any(p.name.startswith(".merged.") for p in tmp_path.iterdir())  # the temp folder is gone
    record = json.loads((out / MERGE_RECORD).read_text())
    assert record["adapter"] == str(adapter.resolve()) and record["target_modules"] == ["q_proj", "v_proj"]

    base_only = load_model_dir(tiny_model)
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        with_adapter = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32), str(adapter)).eval()
    merged = load_model_dir(out)  # what `protege model-server --model OUT` does
    assert not any("lora" in name for name, _ in merged.model.named_parameters())

    tokenizer = merged.tokenizer
    expected = _logits(with_adapter, tokenizer)
    got = _logits(merged.model, tokenizer)
    base = _logits(base_only.model, tokenizer)
    assert (expected - base).abs().max() > 1e-2, "the adapter should change the model"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert merged.tokenizer.chat_template == base_only.tokenizer.chat_template


def test_merge_casts_and_refuses_bad_input(tmp_path: Path, tiny_model: Path, adapter: Path) -> None:
    import torch
    from safetensors.torch import load_file

    out = merge_adapter(tiny_model, adapter, tmp_path / "bf16", dtype="bfloat16")
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}

    with pytest.raises(MergeError, match="already exists"):
        merge_adapter(tiny_model, adapter, out)
    merge_adapter(tiny_model, adapter, out, overwrite=True)  # replaced, not merged into
    with pytest.raises(MergeError, match="not a LoRA adapter folder"):
        merge_adapter(tiny_model, tmp_path, tmp_path / "x")
    with pytest.raises(MergeError, match="not a transformers model folder"):
        merge_adapter(tmp_path, adapter, tmp_path / "y")
    with pytest.raises(MergeError, match="dtype"):
        merge_adapter(tiny_model, adapter, tmp_path / "z", dtype="int8")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_model_server_serves_the_merged_model_like_base_plus_adapter(tmp_path: Path, tiny_model: Path,
                                                                     adapter: Path) -> None:
    merged = merge_adapter(tiny_model, adapter, tmp_path / "merged")
    with ThreadPoolExecutor(2) as pool:  # both start at once
        starting = [pool.submit(start_model_server, tmp_path, "--model", str(tiny_model),
                                "--lora", f"student={adapter}"),
                    pool.submit(start_model_server, tmp_path, "--model", str(merged), "--served-model-name", "merged")]
    with_lora, plain = (f.result() for f in starting)
    try:
        for prompt in PROMPTS[:2]:
            answers = [_chat(server.url, model, prompt) for server, model in ((with_lora, "student"),
                                                                                (plain, "merged"))]
            assert answers[0]["message"]["content"] == answers[1]["message"]["content"]
            first = [[t["logprob"] for t in a["logprobs"]["content"]] for a in answers]
            assert first[0] == pytest.approx(first[1], abs=1e-3)
    finally:
        stop(with_lora.proc)
        stop(plain.proc)


def _chat(url: str, model: str, prompt: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8,
            "temperature": 0, "logprobs": True}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    choice: dict[str, Any] = response.json()["choices"][0]
    return choice


def test_export_merged_command(tmp_path: Path, tiny_model: Path, adapter: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "merged-cli"
    done = subprocess.run([sys.executable, "-m", "protege", "export-merged", "--adapter", str(adapter),
                           "--base-model", str(tiny_model), "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").exists() and list(out.glob("*.safetensors"))
    again = subprocess.run([sys.executable, "-m", "protege", "export-merged", "--adapter", str(adapter),
                            "--base-model", str(tiny_model), "--out", str(out)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 1 and "protege export-merged:" in again.stderr  # refuses to overwrite
