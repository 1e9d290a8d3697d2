"""Exact and near-duplicate examples: repeated traffic must not outweigh the rest of a task.

Exact duplicates compare normalised text (NFKC, lower case, whitespace collapsed). Near duplicates
compare shingle sets: MinHash signatures put candidates into LSH buckets and each candidate pair is
then confirmed with the exact Jaccard similarity of the two shingle sets, so the result does not
depend on MinHash's estimation error, only (very rarely) on a missed candidate.

MinHash here needs no permutation arithmetic: each shingle is hashed once with SHAKE-128 into
`num_perm` independent 32-bit values (seeded), and a signature is the element-wise minimum. Everything
is deterministic: the same texts in the same order give the same answer in every process.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Shingling = Literal["word", "char"]
DuplicateReason = Literal["duplicate", "near_duplicate"]

_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_EMPTY_SLOT = 2**32 - 1


def normalise_text(text: str) -> str:
    """NFKC, lower case, runs of whitespace as one space, trimmed: formatting noise is not a difference."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def shingles(text: str, kind: Shingling = "word", size: int | None = None) -> set[bytes]:
    """Word 3-shingles (default) or character 5-shingles of the normalised text. A text shorter than one
    shingle is a single shingle of itself, so short texts still compare."""
    normalised = normalise_text(text)
    if kind == "word":
        n = size or 3
        words = _WORD.findall(normalised)
        grams = [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]
    else:
        n = size or 5
        grams = [normalised[i:i + n] for i in range(max(1, len(normalised) - n + 1))]
    return {gram.encode("utf-8") for gram in grams}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class MinHasher:
    """`num_perm` seeded hash functions; `signature(shingles)` is their minima over the set."""

    def __init__(self, num_perm: int = 128, seed: int = 0) -> None:
        if num_perm < 1:
            raise ValueError("num_perm must be positive")
        self.num_perm = num_perm
        self._salt = f"protege-minhash:{seed}:".encode()
        self._format = f"<{num_perm}I"

    def signature(self, items: Iterable[bytes]) -> tuple[int, ...]:
        rows = [struct.unpack(self._format, hashlib.shake_128(self._salt + item).digest(4 * self.num_perm))
                for item in items]
        if not rows:
            return (_EMPTY_SLOT,) * self.num_perm
        return tuple(map(min, zip(*rows, strict=True)))


def estimated_jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """The share of equal slots in two signatures estimates the Jaccard similarity of their sets."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def lsh_shape(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band): the most selective banding whose chance of making a pair at `threshold`
    similarity a candidate is at least `recall`. Selective means fewer false candidates to verify."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Item is a duplicate of the earlier kept item at index `of` (Jaccard `similarity`, 1.0 when exact)."""

    reason: DuplicateReason
    of: int
    similarity: float


def find_duplicates(texts: Sequence[str], *, threshold: float | None = 0.9, num_perm: int = 128,
                    shingling: Shingling = "word", seed: int = 0) -> list[Duplicate | None]:
    """For each text (given oldest first), None to keep it or the Duplicate that drops it. Each text is
    compared with the texts kept before it, so the oldest of a group survives. `threshold=None` finds
    exact duplicates only."""
    result: list[Duplicate | None] = []
    exact: dict[str, int] = {}
    hasher = MinHasher(num_perm, seed)
    bands, rows = lsh_shape(num_perm, threshold) if threshold is not None else (0, 0)
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    kept_sets: dict[int, set[bytes]] = {}
    for index, text in enumerate(texts):
        key = exact_key(text)
        if key in exact:
            result.append(Duplicate("duplicate", exact[key], 1.0))
            continue
        if threshold is None:
            exact[key] = index
            result.append(None)
            continue
        grams = shingles(text, shingling)
        signature = hasher.signature(grams)
        band_keys = [(band, signature[band * rows:(band + 1) * rows]) for band in range(bands)]
        candidates = sorted({other for band_key in band_keys for other in buckets.get(band_key, ())})
        match = next(((other, sim) for other in candidates
                      if (sim := jaccard(grams, kept_sets[other])) >= threshold), None)
        if match is not None:
            result.append(Duplicate("near_duplicate", match[0], match[1]))
            continue
        exact[key] = index
        kept_sets[index] = grams
        for band_key in band_keys:
            buckets.setdefault(band_key, []).append(index)
        result.append(None)
    return result
