"""The asyncio side of the engine: submit the choices of one request and iterate over their updates.

The engine thread calls each sequence's callback; the callback hands the update to the event loop
with `call_soon_threadsafe`, into one queue per request. Leaving the iteration early (the client
went away, the task was cancelled) cancels the sequences that are still running, which frees
their batch slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from model_server.engine import Callback, Engine, Sequence, Update
from model_server.sampling import SamplingParams


class RequestStream:
    """The n sequences (choices) of one chat completion request."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: list[SamplingParams],
                 adapter: str | None, on_submit: Callable[[RequestStream], None] | None = None) -> None:
        self._engine = engine
        self._on_submit = on_submit
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()
        self._open: set[int] = set(range(len(params)))
        self._seqs = [
            Sequence(prompt_ids, p, self._callback(index), adapter) for index, p in enumerate(params)
        ]
        self._started = False

    def _callback(self, index: int) -> Callback:
        loop, q = self._loop, self._queue

        def deliver(update: Update) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(q.put_nowait, (index, update))

        return deliver

    async def updates(self) -> AsyncIterator[tuple[int, Update]]:
        """(choice index, update) pairs until every choice has finished."""
        if not self._started:
            self._started = True
            for seq in self._seqs:
                self._engine.submit(seq)
            if self._on_submit is not None:
                self._on_submit(self)
        try:
            while self._open:
                index, update = await self._queue.get()
                if update.finish_reason is not None:
                    self._open.discard(index)
                yield index, update
        finally:
            self.cancel()

    def cancel(self) -> None:
        for index in list(self._open):
            self._engine.cancel(self._seqs[index].id)
        self._open.clear()
