"""The model server's HTTP API (FastAPI): OpenAI chat completions and embeddings, /v1/models, vLLM's LoRA routes.

All state lives on `app.state` (`engine`, `served_model_name`); inference runs on the engine's
own thread, so the event loop stays free to answer /healthz while tokens are being generated.
Every error is OpenAI's error body, built from `gateway.errors`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import bearer_token
from gateway.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    NotFoundError,
    ProtegeError,
    ServiceUnavailableError,
)
from gateway.http_errors import install_error_handler
from gateway.http_utils import read_body
from gateway.openai.errors import OPENAI
from model_server import protocol as p
from model_server.adapters import AdapterError, AdapterNotFound
from model_server.embeddings import Embedder, EmbeddingsRequest
from model_server.engine import Engine, Update
from model_server.names import DEFAULT_SERVED_NAME
from model_server.sampling import LogprobEntry, SamplingParams
from model_server.streams import RequestStream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What keeps one client from taking the server: a key, a body size, a queue length, adapter folders."""

    api_key: str | None = None  # every route but /healthz needs `Authorization: Bearer <key>`
    max_body_bytes: int = 8 * 1024 * 1024
    max_waiting: int = 256  # requests queued behind the running batch; beyond, 503
    adapter_dirs: tuple[Path, ...] = ()  # LoRA adapters load only from inside these (empty: anywhere)


def create_model_server_app(engine: Engine, *, served_model_name: str = DEFAULT_SERVED_NAME,
                            stop_engine_on_shutdown: bool = False, limits: ServerLimits = ServerLimits()) -> FastAPI:
    """The ASGI app serving `engine` (started here if it is not running yet)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            if stop_engine_on_shutdown:
                await asyncio.to_thread(engine.stop)

    app = FastAPI(title="Protégé model server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine = engine
    app.state.served_model_name = served_model_name
    app.state.created = p.now()
    install_error_handler(app, OPENAI)  # the gateway's renderer: the same OpenAI error shape
    if limits.api_key is not None:
        app.add_middleware(_KeyCheck, api_key=limits.api_key)

    unsubmitted: weakref.WeakSet[RequestStream] = weakref.WeakSet()

    async def body_of(request: Request) -> bytes:
        return await read_body(request, limits.max_body_bytes)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if not engine.alive:
            return _json({"status": "starting"}, status=503)
        return _json({"status": "ok", "model": served_model_name, "engine": engine.stats()})

    @app.get("/throughput")
    async def throughput() -> Response:
        # what the gateway prices a self-hosted model by: compute time spread over the tokens it serves
        return _json(engine.throughput())

    @app.get("/v1/models")
    async def list_models() -> Response:
        created = app.state.created
        cards = [p.model_card(served_model_name, created=created, root=engine.source, parent=None,
                              max_model_len=engine.context_length)]
        for name, path in sorted(engine.adapter_names().items()):
            cards.append(p.model_card(name, created=created, root=path, parent=served_model_name,
                                      max_model_len=engine.context_length))
        return _json({"object": "list", "data": cards})

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        body = p.parse_body(await body_of(request), p.LoadLoraRequest)
        if body.lora_name == served_model_name:
            raise BadRequestError("The LoRA adapter name must differ from the base model's name.",
                                  param="lora_name")
        path = _allowed_adapter_path(body.lora_path, limits.adapter_dirs)
        try:
            await asyncio.wrap_future(engine.load_adapter(body.lora_name, path))
        except AdapterError as exc:
            raise BadRequestError(str(exc), param="lora_path" if "already" not in str(exc) else "lora_name") \
                from exc
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        body = p.parse_body(await body_of(request), p.UnloadLoraRequest)
        try:
            await asyncio.wrap_future(engine.unload_adapter(body.lora_name))
        except AdapterNotFound as exc:
            raise NotFoundError(f"The LoRA adapter '{body.lora_name}' is not loaded.", param="lora_name",
                                code="model_not_found") from exc
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    embedder = Embedder()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return _json(await embedder.respond(p.parse_body(await body_of(request), EmbeddingsRequest)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = p.parse_body(await body_of(request), p.ChatCompletionRequest)
        # a stream submits its sequences once its response starts: until then it is counted here, so a burst
        # that arrives at once cannot slip past the limit (a stream never started is collected, and uncounted)
        stats = engine.stats()
        queued = stats["waiting"] + len(unsubmitted) - max(0, engine.max_batch - stats["running"])
        if queued >= limits.max_waiting:
            raise ServiceUnavailableError(f"{limits.max_waiting} requests are already waiting; retry shortly",
                                          code="overloaded", retry_after=1)
        model = body.model or served_model_name
        adapter = _resolve_model(engine, model, served_model_name)
        prompt_ids = _encode(engine, body)
        params = _sampling_params(engine, body, len(prompt_ids))
        stream = RequestStream(engine, prompt_ids, params, adapter, on_submit=unsubmitted.discard)
        unsubmitted.add(stream)
        if body.stream:
            options = body.stream_options
            include_usage = bool(options and options.include_usage)
            return StreamingResponse(
                _sse(engine, stream, body, model, len(prompt_ids), include_usage,
                     continuous=include_usage and bool(options and options.continuous_usage_stats)),
                media_type="text/event-stream", headers={"cache-control": "no-cache"},
            )
        return await _complete(request, engine, stream, body, model, len(prompt_ids))

    return app


def _allowed_adapter_path(raw: str, dirs: tuple[Path, ...]) -> Path:
    """The adapter folder, when it lies inside one of `dirs` (after resolving links and `..`)."""
    path = Path(raw).expanduser()
    if not dirs:
        return path
    resolved = path.resolve()
    if not any(resolved.is_relative_to(d.resolve()) for d in dirs):
        # the same answer whether or not the path exists: the route is no way to probe the file system
        raise BadRequestError("LoRA adapters load only from this server's adapter folders (--adapter-dir)",
                              param="lora_path", code="adapter_path_not_allowed")
    return resolved


class _KeyCheck:
    """`Authorization: Bearer <key>` on every route but /healthz (a liveness probe carries no key)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz":
            headers = dict(scope.get("headers") or [])
            token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
            if token is None or not hmac.compare_digest(token.encode(), self._key):
                response = OPENAI.render_error(AuthenticationError("missing or invalid API key",
                                                                   code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _resolve_model(engine: Engine, model: str, served: str) -> str | None:
    if model == served:
        return None
    if engine.has_adapter(model):
        return model
    raise NotFoundError(f"The model `{model}` does not exist.", param="model", code="model_not_found")


def _encode(engine: Engine, body: p.ChatCompletionRequest) -> list[int]:
    messages = p.template_messages(body)
    try:
        return engine.encode_chat(messages)
    except (jinja2.TemplateError, ValueError) as exc:  # ValueError: e.g. the model has no chat template
        raise BadRequestError(f"The chat template rejected the messages: {exc}", param="messages") from exc


def _sampling_params(engine: Engine, body: p.ChatCompletionRequest, prompt_len: int) -> list[SamplingParams]:
    context = engine.context_length
    if prompt_len >= context:
        raise ContextLengthError(
            f"This model's maximum context length is {context} tokens. However, your messages resulted in "
            f"{prompt_len} tokens. Please reduce the length of the messages."
        )
    requested = body.max_completion_tokens or body.max_tokens
    if requested is None:
        max_tokens = min(engine.max_new_tokens, context - prompt_len)
    else:
        max_tokens = min(requested, engine.max_new_tokens)  # clamped to the server's cap
        if prompt_len + max_tokens > context:
            raise ContextLengthError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
    if body.top_logprobs is not None and body.top_logprobs > 0 and not body.logprobs:
        raise BadRequestError("top_logprobs requires logprobs to be true.", param="top_logprobs")
    stops = body.stop_list()
    if len(stops) > 16:
        raise BadRequestError("At most 16 stop sequences are allowed.", param="stop")
    temperature = 1.0 if body.temperature is None else body.temperature
    out = []
    for i in range(body.n or 1):
        out.append(SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=None if body.seed is None else body.seed + i,
            stop=tuple(stops),
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs or 0,
            ignore_eos=body.ignore_eos,
        ))
    return out


def _error_for(update: Update) -> ProtegeError:
    if update.error and "shutting down" in update.error:
        return ServiceUnavailableError(update.error)
    return ProtegeError(update.error or "generation failed")


async def _complete(request: Request, engine: Engine, stream: RequestStream, body: p.ChatCompletionRequest,
                    model: str, prompt_len: int) -> Response:
    n = body.n or 1
    texts = [""] * n
    entries: list[list[LogprobEntry]] = [[] for _ in range(n)]
    tokens = [0] * n
    reasons: list[str | None] = [None] * n

    async def collect() -> None:
        async for index, update in stream.updates():
            if update.finish_reason == "error":
                raise _error_for(update)
            texts[index] += update.text
            entries[index].extend(update.logprobs)
            tokens[index] = update.completion_tokens
            reasons[index] = update.finish_reason

    work = asyncio.ensure_future(collect())
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():  # the client went away: free the slots
            work.cancel()
            stream.cancel()
    if work.cancelled():
        return Response(status_code=499)
    work.result()
    choices = []
    for i in range(n):
        logprobs = None
        if body.logprobs:
            logprobs = {"content": p.logprob_content(entries[i], engine.tokens,
                                                     as_ids=body.return_tokens_as_token_ids)}
        choices.append({"index": i, "message": {"role": "assistant", "content": texts[i]},
                        "logprobs": logprobs, "finish_reason": reasons[i]})
    return _json({
        "id": p.completion_id(), "object": "chat.completion", "created": p.now(), "model": model,
        "system_fingerprint": None, "choices": choices, "usage": p.usage(prompt_len, sum(tokens)),
    })


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _sse(engine: Engine, stream: RequestStream, body: p.ChatCompletionRequest, model: str,
               prompt_len: int, include_usage: bool, *, continuous: bool = False) -> AsyncIterator[bytes]:
    cid, created, n = p.completion_id(), p.now(), body.n or 1
    tokens = [0] * n

    def so_far() -> dict[str, int] | None:
        return p.usage(prompt_len, sum(tokens)) if continuous else None

    try:
        for i in range(n):
            first = {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}
            yield p.chunk(cid, created, model, [first], so_far(), with_usage=include_usage)
        async for index, update in stream.updates():
            if update.finish_reason == "error":
                yield b"data: " + orjson.dumps(_error_for(update).to_body()) + b"\n\n"
                break
            tokens[index] = update.completion_tokens
            if not update.text and not update.logprobs and update.finish_reason is None:
                continue
            logprobs = None
            if body.logprobs:
                logprobs = {"content": p.logprob_content(update.logprobs, engine.tokens,
                                                         as_ids=body.return_tokens_as_token_ids)}
            delta = {"content": update.text} if update.text or update.finish_reason is None else {}
            choice = {"index": index, "delta": delta, "logprobs": logprobs,
                      "finish_reason": update.finish_reason}
            yield p.chunk(cid, created, model, [choice], so_far(), with_usage=include_usage)
        else:
            if include_usage:
                yield p.chunk(cid, created, model, [], p.usage(prompt_len, sum(tokens)), with_usage=True)
        yield b"data: [DONE]\n\n"
    finally:
        stream.cancel()
