"""What the HTTP layers share: body parsing (size limit, deadline, JSON object, nesting, validation), the
streaming response that always closes its iterator, and the gateway state of a request."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.auth import bearer_token
from gateway.errors import BadRequestError, PayloadTooLargeError, RequestTimeoutError, invalid_field

if TYPE_CHECKING:
    from gateway.state import GatewayState

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The whole body, within `limit` bytes and `timeout_s` seconds (a client trickling its body —
    slow-loris — gets a 408 instead of holding a connection and a worker's memory forever)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body(request, limit)
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s",
                                  code="body_timeout") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequestError("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequestError("client closed the connection while sending the body") from None
    return b"".join(chunks)


# JSON nested deeper than this is refused: the gateway must be able to forward, capture (which wraps
# the body one level deeper) and export whatever it accepts, and orjson stops at 254 levels.
MAX_NESTING = 64


async def bearer_client(request: Request, state: GatewayState) -> str:
    """The client the request's `Authorization: Bearer` key identifies (a 401 when it must and does not)."""
    return await state.keys.check(bearer_token(request.headers.get("authorization")))


async def read_json_object(request: Request, state: GatewayState) -> dict[str, Any]:
    """The request's body as a JSON object, within the gateway's size limit and body deadline."""
    return parse_json_object(await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_s))


def parse_json_object(raw: bytes, *, max_nesting: int = MAX_NESTING) -> dict[str, Any]:
    if not raw:
        raise BadRequestError("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    if nested_deeper_than(data, max_nesting):
        raise BadRequestError(f"request body is nested deeper than {max_nesting} levels", code="too_deep")
    return data


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` has containers more than `limit` levels deep (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_field(exc.errors(include_url=False)) from None


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event named by its payload's type (the `event:` line), as Anthropic's Messages API and
    OpenAI's Responses API frame them."""
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class SSEResponse(StreamingResponse):
    """A streaming response that stops as soon as its client goes away and always closes its iterator, so
    the exchange is recorded (as incomplete) and the upstream call ends at once, not whenever the generator
    is collected.

    Starlette watches for the disconnect from an anyio task group per response, a tenth of a stream's CPU in
    the gateway; here one plain task waits for it and cancels the stream."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            streaming.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not gone:
                raise
            streaming.uncancel()  # the cancellation was ours: the client left, the request ends normally
        finally:
            watcher.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.protege
    return state
