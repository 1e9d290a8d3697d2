"""Incremental detokenisation with stop strings, and the text/bytes of single tokens for logprobs.

`TextState` turns a growing list of token ids into text deltas that are safe to send:

* the whole sequence is decoded each time and only the new suffix is emitted, so multi-token
  characters come out whole; a trailing U+FFFD (an incomplete UTF-8 sequence) is held back;
* text that could still become the start of a stop string is held back; once a stop string
  appears, the text is cut before it and the sequence is finished.

Logprob entries travel with the text they belong to: an entry is released once the text of its
token has started to be emitted, and entries of tokens inside a stop string are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

_REPLACEMENT = "\ufffd"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


class TokenTable:
    """Token id -> (display text, UTF-8 bytes) as OpenAI's logprobs show them; cached per id."""

    def __init__(self, tokenizer: Any, decode: Callable[[list[int]], str]) -> None:
        self._tokenizer = tokenizer
        self._decode = decode
        self._byte_level = _is_byte_level(tokenizer)
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def lookup(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._compute(token_id)
            self._cache[token_id] = hit
        return hit

    def _compute(self, token_id: int) -> tuple[str, list[int]]:
        raw: bytes | None = None
        if self._byte_level:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            table = _byte_decoder()
            if isinstance(piece, str) and piece and all(ch in table for ch in piece):
                raw = bytes(table[ch] for ch in piece)
        if raw is None:
            raw = self._decode([token_id]).encode("utf-8")
        return raw.decode("utf-8", errors="replace"), list(raw)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` must wait: a possible stop-string start, or U+FFFD."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    stripped = len(text) - len(text.rstrip(_REPLACEMENT))
    return max(hold, stripped)


class TextState:
    """The text of one generated sequence, emitted incrementally."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]) -> None:
        self._decode = decode
        self._stops = [s for s in stops if s]
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (before any stop cut)
        self.emitted = ""  # what has been sent
        self._pending: list[tuple[int, Any]] = []  # (start offset of the token's text, logprob entry)
        self.stopped = False

    def push(self, token_id: int, entry: Any = None) -> tuple[str, list[Any]]:
        """Add a content token; returns (new safe text, released logprob entries). Sets `stopped`."""
        start = len(self.text.rstrip(_REPLACEMENT))
        self.ids.append(token_id)
        self.text = self._decode(self.ids)
        if entry is not None:
            self._pending.append((start, entry))
        if self._stops:
            search_from = max(0, len(self.emitted) - self._max_stop)
            cut = min((i for s in self._stops if (i := self.text.find(s, search_from)) >= 0), default=-1)
            if cut >= 0:
                self.stopped = True
                return self._release(self.text[: max(cut, len(self.emitted))], final=True)
        safe = self.text[: len(self.text) - _held_back(self.text, self._stops)]
        return self._release(safe, final=False)

    def finish(self) -> tuple[str, list[Any]]:
        """The sequence ended (EOS or length): everything still held back goes out."""
        if self.stopped:
            return "", []
        return self._release(self.text, final=True)

    def _release(self, target: str, *, final: bool) -> tuple[str, list[Any]]:
        if target.startswith(self.emitted):
            delta = target[len(self.emitted):]
        else:  # decoding was not prefix-stable (rare): send only what is new
            delta = target[len(self.emitted):] if len(target) > len(self.emitted) else ""
        self.emitted += delta
        limit = len(self.emitted)
        count = 0
        for start, _entry in self._pending:
            if not (start < limit or (final and not self.stopped)):
                break
            count += 1
        released = [entry for _start, entry in self._pending[:count]]
        self._pending = [] if final else self._pending[count:]
        return delta, released
