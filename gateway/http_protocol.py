"""uvicorn's httptools protocol with a deadline for a request's headers.

uvicorn waits for headers forever: a client that opens connections and trickles header bytes (or sends
nothing) holds them, and enough of them exhaust the server (slow-loris). Here each request's headers —
from the connection's start, or from the first byte of the next request on a kept-alive connection —
must be complete within `header_timeout_s`, or the client gets a 408 and the connection is closed. The
body has its own deadline (`body_timeout_s`, `gateway.http_utils.read_body`).
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import RequestTimeoutError

# before the headers there is no route and no dialect yet: OpenAI's shape, from the same error tree
_BODY = orjson.dumps(RequestTimeoutError("the request headers did not arrive in time", code="header_timeout").to_body())
_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
             b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0  # set from the settings before the server starts (each worker sets its own)

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()
