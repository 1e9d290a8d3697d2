"""Conversation state of the Responses API: responses kept in the store (so every replica sees them), the
history a `previous_response_id` continues, and who may read them (the gateway key that created them)."""

from __future__ import annotations

import logging
from typing import Any

from gateway.errors import NotFoundError, StoreError
from gateway.responses.response import assistant_message
from gateway.store import Store, StoredResponse

log = logging.getLogger("protege.responses")


def not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id[:80]}' not found.", param=param, code="response_not_found")


async def find(store: Store, response_id: str, client: str, param: str | None = None) -> StoredResponse:
    """The stored response, if `client` created it; a 404 otherwise (another key's response is as unknown as
    one that does not exist)."""
    stored = await store.get_response(response_id)
    if stored is None or stored.client != client:
        raise not_found(response_id, param)
    return stored


async def history(store: Store, previous_response_id: str, client: str) -> list[dict[str, Any]]:
    """The conversation (chat messages) a follow-up of `previous_response_id` continues."""
    return (await find(store, previous_response_id, client, "previous_response_id")).history


def record(response: dict[str, Any], *, task: str, client: str, user: str | None, created_at: float,
           input_items: list[dict[str, Any]], before: list[dict[str, Any]], turn: list[dict[str, Any]],
           ) -> StoredResponse:
    """What is kept of a finished response: the conversation so far is `before`, this request's input `turn`
    and the response's output."""
    return StoredResponse(response_id=str(response["id"]), created_at=created_at, task=task, client=client,
                          user=user, response=response, input_items=input_items,
                          history=[*before, *turn, assistant_message(response["output"])])


async def keep(store: Store, stored: StoredResponse) -> None:
    """Store a response. Its answer is paid for (and, streamed, has reached the client already), so a store
    that fails is logged rather than turned into an error; a follow-up naming it then gets a clear 404."""
    try:
        await store.put_response(stored)
    except StoreError as exc:
        log.warning("response %s was not stored: %s", stored.response_id, exc.message)
