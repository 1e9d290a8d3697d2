"""LoRA adapters on top of the base model (peft multi-adapter), and the batched forward pass.

Only the engine thread calls into this class. With no adapter loaded the plain transformers model
runs; once one is loaded the model is wrapped in a `PeftModel`. Each forward pass then takes the
cheapest route for its rows: all base rows run with the adapter layers disabled, rows that all
use one adapter run with that adapter active, and a mix runs peft's mixed-batch inference
(`adapter_names=`, `"__base__"` for base rows), so different adapters and the base model still
share one batch. Switching between these costs a walk over the modules, so it happens only when
the batch's make-up changes. Unloading the last adapter unwraps the model again (`unload()`
removes the LoRA layers).
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel

log = logging.getLogger(__name__)

BASE = "__base__"
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def cache_keyword(model: Any) -> str:
    """The name under which this transformers version takes the KV cache: `cache` since 5.24
    (`past_key_values` is deprecated there and goes in 5.40), `past_key_values` before."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class AdapterError(ValueError):
    """The adapter path or contents are invalid (reported to clients as 400)."""


class AdapterNotFound(KeyError):
    """No adapter of that name is loaded (reported to clients as 404)."""


def _validate_adapter_dir(path: Path) -> LoraConfig:
    if not path.is_dir():
        raise AdapterError(f"LoRA adapter path {str(path)!r} is not a directory")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"no adapter_config.json in {str(path)!r}")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise AdapterError(f"no adapter weights ({' or '.join(_WEIGHT_FILES)}) in {str(path)!r}")
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"unreadable adapter_config.json in {str(path)!r}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        raise AdapterError(f"{str(path)!r} is not a LoRA adapter (peft_type must be LORA)")
    try:
        config = PeftConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise AdapterError(f"invalid adapter_config.json in {str(path)!r}: {exc}") from exc
    if not isinstance(config, LoraConfig):
        raise AdapterError(f"{str(path)!r} is not a LoRA adapter")
    config.inference_mode = True
    return config


class AdapterManager:
    """The model plus its LoRA adapters; `forward` runs one batched step."""

    def __init__(self, model: Any) -> None:
        self.base_model = model
        self.peft: Any = None  # PeftModel once an adapter is loaded
        self.paths: dict[str, str] = {}
        self._mode: tuple[str, str] | None = None  # ("off" | "one" | "mixed", adapter) now in effect
        self._cache_kw = cache_keyword(model)

    @property
    def model(self) -> Any:
        return self.peft if self.peft is not None else self.base_model

    def _switch(self, adapters: list[str]) -> bool:
        """Put the peft model in the cheapest mode for these rows; True when `adapter_names` is needed."""
        distinct = set(adapters)
        if distinct == {BASE}:
            mode = ("off", "")
        elif len(distinct) == 1:
            mode = ("one", adapters[0])
        else:
            mode = ("mixed", "")
        if mode != self._mode:
            tuner = self.peft.base_model
            if mode[0] == "off":
                tuner.disable_adapter_layers()
            else:
                tuner.enable_adapter_layers()
                if mode[0] == "one" and self.peft.active_adapter != mode[1]:
                    self.peft.set_adapter(mode[1], inference_mode=True)
            self._mode = mode
        return mode[0] == "mixed"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache: Any, adapters: list[str]) -> torch.Tensor:
        """Logits of the last position of every row, shape (B, V)."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            self._cache_kw: cache, "use_cache": True, "logits_to_keep": 1,
        }
        if self.peft is not None and self._switch(adapters):
            kwargs["adapter_names"] = adapters
        out = self.model(**kwargs)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def load(self, name: str, path: Path) -> None:
        if name in self.paths:
            raise AdapterError(f"the LoRA adapter {name!r} is already loaded")
        config = _validate_adapter_dir(path)
        try:
            with torch.no_grad():
                if self.peft is None:
                    self._load_first(name, path, config)
                else:
                    self._load_more(name, path)
        finally:
            self._mode = None  # loading may change which adapter is active
        self.peft.eval()
        self.paths[name] = str(path)
        log.info("loaded LoRA adapter %r from %s", name, path)

    def _load_first(self, name: str, path: Path, config: LoraConfig) -> None:
        try:
            with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                peft_model = PeftModel(self.base_model, config, adapter_name=name)
        except Exception as exc:
            self._strip_lora()
            raise AdapterError(f"the LoRA adapter in {str(path)!r} does not fit this model: {exc}") from exc
        try:
            result = peft_model.load_adapter(str(path), adapter_name=name, local_files_only=True)
            self._check_result(result, path, name)
        except Exception as exc:
            self.base_model = peft_model.unload()
            raise _as_adapter_error(exc, path) from exc
        self.peft = peft_model

    def _load_more(self, name: str, path: Path) -> None:
        try:
            result = self.peft.load_adapter(str(path), adapter_name=name, local_files_only=True)
            self._check_result(result, path, name)
        except Exception as exc:
            if name in self.peft.peft_config:
                self.peft.delete_adapter(name)
            raise _as_adapter_error(exc, path) from exc

    @staticmethod
    def _check_result(result: Any, path: Path, name: str) -> None:
        # peft's own filter matches the adapter name as a substring; keep only this adapter's keys
        missing = [k for k in getattr(result, "missing_keys", []) or [] if f".{name}." in k]
        if missing:
            raise AdapterError(f"the LoRA adapter in {str(path)!r} lacks weights, e.g. {missing[0]}")

    def _strip_lora(self) -> None:
        """Undo a half-done injection: put back the original modules of any LoRA layer present."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for qualified, module in list(self.base_model.named_modules()):
            if isinstance(module, BaseTunerLayer) and qualified:
                parent_name, _, child = qualified.rpartition(".")
                parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
                setattr(parent, child, module.get_base_layer())

    def unload(self, name: str) -> None:
        if name not in self.paths:
            raise AdapterNotFound(name)
        del self.paths[name]
        self._mode = None
        if self.peft is None:  # pragma: no cover - paths and peft are kept in step
            return
        if self.paths:
            self.peft.delete_adapter(name)
        else:
            self.base_model = self.peft.unload()
            self.peft = None
        log.info("unloaded LoRA adapter %r", name)


def _as_adapter_error(exc: Exception, path: Path) -> AdapterError:
    if isinstance(exc, AdapterError):
        return exc
    return AdapterError(f"cannot load the LoRA adapter in {str(path)!r}: {exc}")
