"""LoRA adapters through vLLM's routes: load, list, generate (alone and mixed in one batch), unload."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.model_server.conftest import TINY_NAME, start_model_server
from tests.model_server.reference import async_client, chat_ids, greedy, prompt_ids, user
from tests.servers import Server, stop


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` (a FutureWarning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def make_lora(base_dir: Path, out_dir: Path, seed: int, targets: list[str]) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM")
    with _quiet_peft():
        get_peft_model(model, config).save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def loras(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {
        "style-a": make_lora(tiny_model_dir, root / "a", 1, ["q_proj", "v_proj"]),
        "style-b": make_lora(tiny_model_dir, root / "b", 2, ["q_proj", "k_proj", "o_proj", "down_proj"]),
    }


@pytest.fixture(scope="module")
def adapter_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    server = start_model_server(tmp_path_factory.mktemp("adapter-server"), "--model", str(tiny_model_dir),
                                "--served-model-name", TINY_NAME)
    yield server
    stop(server.proc)


def _load(server: Server, name: str, path: Path | str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                      timeout=60)


def _unload(server: Server, name: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def _peft_greedy(base_dir: Path, lora: Path, ids: list[int], max_tokens: int, eos: int) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    with _quiet_peft():
        model = PeftModel.from_pretrained(base, str(lora)).eval()
    return greedy(model, ids, max_tokens, eos=eos)


async def test_adapter_lifecycle(adapter_server: Server, loras: dict[str, Path], tiny_model_dir: Path,
                                 tiny_loaded: Any) -> None:
    server = adapter_server
    messages = user("Tell me about the weather today.")
    base_ids, _ = chat_ids(server, messages, 16)

    assert _load(server, "style-a", loras["style-a"]).status_code == 200
    assert _load(server, "style-b", loras["style-b"]).status_code == 200
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert [(m["id"], m["parent"]) for m in models] == [(TINY_NAME, None), ("style-a", TINY_NAME),
                                                         ("style-b", TINY_NAME)]

    a_ids, a_response = chat_ids(server, messages, 16, model="style-a")
    b_ids, _ = chat_ids(server, messages, 16, model="style-b")
    assert a_response.model == "style-a"
    assert a_ids != base_ids and b_ids != base_ids and a_ids != b_ids
    eos = tiny_loaded.tokenizer.eos_token_id
    prompt = prompt_ids(tiny_loaded.tokenizer, messages)
    assert a_ids == _peft_greedy(tiny_model_dir, loras["style-a"], prompt, 16, eos)
    assert base_ids == greedy(tiny_loaded.model, prompt, 16, eos=eos)  # base requests run without adapters

    # base and both adapters mixed in one batch give the same tokens as alone
    async with async_client(server) as api:
        responses = await asyncio.gather(*(
            api.chat.completions.create(model=m, messages=messages, max_tokens=16, temperature=0, logprobs=True,
                                        extra_body={"return_tokens_as_token_ids": True})
            for m in [TINY_NAME, "style-a", "style-b", TINY_NAME, "style-a"]
        ))
    mixed = [[int(e.token.removeprefix("token_id:")) for e in r.choices[0].logprobs.content] for r in responses]
    assert mixed == [base_ids, a_ids, b_ids, base_ids, a_ids]

    # loading a name twice is refused, like vLLM
    again = _load(server, "style-a", loras["style-b"])
    assert again.status_code == 400 and again.json()["error"]["type"] == "invalid_request_error"

    assert _unload(server, "style-a").status_code == 200
    with pytest.raises(openai.NotFoundError) as caught:
        chat_ids(server, messages, 4, model="style-a")
    assert caught.value.code == "model_not_found"
    gone = _unload(server, "style-a")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"
    assert chat_ids(server, messages, 16, model="style-b")[0] == b_ids
    assert _unload(server, "style-b").status_code == 200
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == [TINY_NAME]
    assert chat_ids(server, messages, 16)[0] == base_ids  # the LoRA layers are gone again


def test_bad_adapters_are_refused(adapter_server: Server, tmp_path: Path, loras: dict[str, Path]) -> None:
    server = adapter_server
    assert _load(server, "x", tmp_path / "missing").status_code == 400
    (tmp_path / "empty").mkdir()
    assert _load(server, "x", tmp_path / "empty").status_code == 400
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4,
                                                            "target_modules": ["no_such_module"]}))
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    r = _load(server, "x", broken)
    assert r.status_code == 400, r.text
    assert _load(server, TINY_NAME, loras["style-a"]).status_code == 400  # the base model's name
    missing_name = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_path": str(loras["style-a"])})
    assert missing_name.status_code == 400
    assert httpx.get(f"{server.url}/v1/models").json()["data"][1:] == []
    # the server still works, and a good adapter still loads after the failures
    assert _load(server, "x", loras["style-a"]).status_code == 200
    assert _unload(server, "x").status_code == 200


def test_lora_flag_preloads(tmp_path: Path, tiny_model_dir: Path, loras: dict[str, Path]) -> None:
    server = start_model_server(tmp_path, "--model", str(tiny_model_dir), "--served-model-name", TINY_NAME,
                                "--lora", f"style-a={loras['style-a']}")
    try:
        models = httpx.get(f"{server.url}/v1/models").json()["data"]
        assert [(m["id"], m["parent"]) for m in models] == [(TINY_NAME, None), ("style-a", TINY_NAME)]
    finally:
        stop(server.proc)
