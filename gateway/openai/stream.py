"""OpenAI's stream framing: the chat core's chunk dicts as server-sent events, ended by `data: [DONE]` (also after
an error chunk, as OpenAI does)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def openai_events(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Closing this closes `chunks`, so the core records a client that went away at once."""
    try:
        async for chunk in chunks:
            yield sse(chunk)
        yield SSE_DONE
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
