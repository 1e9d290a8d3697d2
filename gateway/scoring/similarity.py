"""The similarity scorer: the cosine of the two answers' sentence embeddings, on the teacher's own scale.

Embeddings come from an OpenAI-compatible `/v1/embeddings` (the model server serves all-MiniLM-L6-v2 offline);
the gateway process only sends HTTP. A raw cosine is not agreement: `SimilarityScale` maps it, with 1 at the
teacher's self-similarity and 0 at its similarity to answers of other requests (`fit_scale`).
"""

from __future__ import annotations

import base64
import math
import statistics
import struct
from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from gateway.errors import UpstreamError
from gateway.scoring.base import Comparison, Score, ScorerKind, SimilarityScale, answer_text

DEFAULT_EMBEDDINGS_MODEL = "all-MiniLM-L6-v2"
BATCH = 64


class Embedder(Protocol):
    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class HttpEmbedder:
    """An embeddings endpoint, asked in batches. `client` is owned by the caller (base URL and key set)."""

    def __init__(self, client: httpx.AsyncClient, model: str = DEFAULT_EMBEDDINGS_MODEL) -> None:
        self.client, self.model = client, model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            batch = [t or " " for t in texts[start:start + BATCH]]  # the endpoint refuses an empty string
            try:
                response = await self.client.post("/embeddings", json={"model": self.model, "input": batch,
                                                                        "encoding_format": "base64"})
            except httpx.HTTPError as exc:
                raise UpstreamError(f"embeddings endpoint unreachable: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise UpstreamError(f"embeddings endpoint answered {response.status_code}: {response.text[:200]}")
            try:
                rows = sorted(response.json().get("data") or [], key=lambda d: int(d.get("index", 0)))
            except (ValueError, TypeError, AttributeError) as exc:
                raise UpstreamError("embeddings endpoint answered something that is not an embeddings list") from exc
            if len(rows) != len(batch):
                raise UpstreamError(f"embeddings endpoint returned {len(rows)} vectors for {len(batch)} texts")
            vectors += [_vector(row.get("embedding")) for row in rows]
        return vectors


def _vector(value: Any) -> list[float]:
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if isinstance(value, list):
        return [float(v) for v in value]
    raise UpstreamError("embeddings endpoint returned a vector that is neither a list nor base64")


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


async def cosines(embedder: Embedder, pairs: Sequence[tuple[str, str]]) -> list[float]:
    vectors = await embedder.embed([text for pair in pairs for text in pair])
    return [cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(pairs))]


async def fit_scale(embedder: Embedder, same: Sequence[tuple[str, str]], answers: Sequence[str], *,
                    source: str) -> SimilarityScale:
    """The scale from pairs of teacher answers to the same request (`same`) and teacher answers to different
    requests (`answers`, each compared with the next one)."""
    if len(same) < 2 or len(answers) < 3:
        raise ValueError("a similarity scale needs at least 2 teacher answer pairs and 3 answers")
    other = [(answers[i], answers[(i + 1) % len(answers)]) for i in range(len(answers))]
    measured = await cosines(embedder, [*same, *other])
    return SimilarityScale(same=statistics.median(measured[:len(same)]), other=statistics.median(measured[len(same):]),
                           pairs=len(same), source=source)


class SimilarityScorer:
    def __init__(self, embedder: Embedder, scale: SimilarityScale) -> None:
        self.embedder, self.scale = embedder, scale

    @property
    def kind(self) -> ScorerKind:
        return "similarity"

    async def score(self, comparisons: Sequence[Comparison]) -> list[Score]:
        texts = [(answer_text(c.student).strip(), answer_text(c.teacher).strip()) for c in comparisons]
        measured = await cosines(self.embedder, [p for p in texts if p[0]]) if any(p[0] for p in texts) else []
        scores, found = [], iter(measured)
        for student, _ in texts:
            if not student:  # no answer is no agreement, whatever an empty string embeds to
                scores.append(Score(0.0, details={"cosine": None}))
                continue
            value = next(found)
            scores.append(Score(self.scale.agreement(value), details={"cosine": round(value, 4)}))
        return scores
