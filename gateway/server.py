"""Running the gateway: uvicorn around `create_app`, with the embedded model server when needed.

With `workers > 1`, uvicorn spawns that many processes on one socket. Each builds its own app from the
settings this process passes in the environment (`WORKER_SETTINGS_ENV`), and their metrics are added up
through prometheus_client's multiprocess mode (see `gateway.metrics`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from gateway.app import NO_KEY_MESSAGE, create_app
from gateway.config import Settings
from gateway.embedded import EmbeddedModelServer
from gateway.errors import ConfigError
from gateway.http_protocol import HeaderTimeoutProtocol
from gateway.store import open_store, redacted_url

log = logging.getLogger("protege")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one line per upstream call is noise (and costs time on the hot path)
    logging.getLogger("httpx").setLevel(logging.WARNING)


# the path of a 0600 file with the settings (secrets included) for the workers: the secrets themselves
# never sit in an environment variable or on a command line
WORKER_SETTINGS_ENV = "PROTEGE_WORKER_SETTINGS_FILE"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


async def _preflight(settings: Settings) -> int:
    """Create or upgrade the store once (before any worker opens it: concurrent first opens of a new
    store would race to create the same tables) and count its active gateway keys; refuse to start
    when keys are required and there is none."""
    store = open_store(settings.store)
    await store.open()
    try:
        records = await store.list_api_keys()
    finally:
        await store.close()
    active = len(settings.gateway_keys) + sum(1 for r in records if not r.revoked)
    if settings.auth_required and active == 0:
        raise ConfigError(NO_KEY_MESSAGE)
    return active if (settings.auth_required or records or settings.gateway_keys) else -1


def auth_summary(settings: Settings, active_keys: int) -> str:
    """The start line's word on authentication; -1 keys: an open gateway."""
    if active_keys >= 0:
        return f"authentication: required ({active_keys} active key{'s' if active_keys != 1 else ''})"
    where = ("this machine only" if not settings.auth_required and settings.auth.required is None
             else "ANY HOST THAT REACHES IT (auth.required: false)")
    return (f"authentication: OFF, open to {where}; `protege keys add --name <app>` turns it on")


def serve(settings: Settings, *, workers: int = 1) -> int:
    configure_logging(settings.log_level)
    active_keys = asyncio.run(_preflight(settings))
    with ExitStack() as stack:
        if not settings.teachers:
            e = settings.embedded
            print("No teacher configured: starting the embedded model server (SmolLM2-135M-Instruct) as the "
                  "teacher. Pass --teacher provider/model to use a hosted model. It is billed for simulation at "
                  f"{e.input_cost_per_token * 1e6:g} / {e.output_cost_per_token * 1e6:g} USD per million input / "
                  "output tokens (gpt-4o-mini's list price unless embedded.*_cost_per_token says otherwise): its "
                  "cost and savings figures stand in for a hosted teacher's.", flush=True)
            embedded = EmbeddedModelServer(settings.embedded)
            stack.callback(embedded.stop)
            embedded.start()
            # the embedded server is also where local students (LoRA adapters) are served
            own_students = settings.student_api_base is None  # local students are served there too
            settings = settings.model_copy(update={
                "teachers": [embedded.teacher()],
                "student_api_base": embedded.api_base if own_students else settings.student_api_base,
                "student_api_key": SecretStr(embedded.api_key) if own_students else settings.student_api_key})
        teachers = ", ".join(f"{t.served_name} ({t.model})" for t in settings.teachers)
        print(f"Protégé gateway on http://{settings.host}:{settings.port}/v1 — teacher: {teachers}; "
              f"store: {redacted_url(settings.store)}" + (f"; {workers} workers" if workers > 1 else "")
              + f"; {auth_summary(settings, active_keys)}", flush=True)
        if workers > 1:
            if settings.admin_port is not None:
                raise ConfigError("admin_port: a separate admin port needs one worker (--workers 1)")
            _run_workers(settings, workers, stack)
            return 0
        HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s
        config = uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http=HeaderTimeoutProtocol,
            log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=30,
            timeout_keep_alive=30,
        )
        # uvicorn re-raises SIGTERM/SIGINT after its graceful stop; exit cleanly instead, so the
        # ExitStack still stops the embedded model server
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        server = uvicorn.Server(config)
        # start-up leaves hundreds of thousands of long-lived objects (fastapi, pydantic, maybe litellm);
        # moving them out of the collector's view keeps full collections from pausing requests
        gc.collect()
        gc.freeze()
        sockets = None
        if settings.admin_port is not None:  # one server, two sockets: see gateway.ports
            sockets = [socket.create_server((settings.host, settings.port)),
                       socket.create_server((settings.admin_host or settings.host, settings.admin_port))]
            print(f"admin, console and metrics on http://{settings.admin_host or settings.host}:"
                  f"{settings.admin_port} only", flush=True)
        server.run(sockets=sockets)
    return 0


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _run_workers(settings: Settings, workers: int, stack: ExitStack) -> None:
    """uvicorn's process supervisor: it restarts a worker that dies and stops them all on SIGTERM/SIGINT."""
    metrics_dir = os.environ.get(MULTIPROC_ENV)
    if metrics_dir:
        # values left by an earlier run would be added to this one's
        for stale in Path(metrics_dir).glob("*.db"):
            stale.unlink()
    else:
        metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="protege-metrics-"))
    # the workers are spawned, not forked: they inherit the environment, and import prometheus_client
    # (which reads the variable once) after it is set
    os.environ[MULTIPROC_ENV] = metrics_dir
    os.environ[WORKER_SETTINGS_ENV] = str(_settings_file(settings, stack))
    uvicorn.run("gateway.server:worker_app", factory=True, workers=workers, host=settings.host, port=settings.port,
                loop="uvloop", http=HeaderTimeoutProtocol, log_level=settings.log_level, access_log=False,
                timeout_graceful_shutdown=30, timeout_keep_alive=30)


def _settings_file(settings: Settings, stack: ExitStack) -> Path:
    """The settings, secrets in clear, in a file only this user can read, removed when the server stops."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="protege-workers-")))  # 0700
    path = folder / "settings.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(_revealed(settings.model_dump())))
    return path


def _revealed(value: Any) -> Any:
    """Settings as plain data with their secrets in clear, for the workers (same user, same host)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    return value


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn factory), from the settings the supervisor passed."""
    settings = Settings.model_validate_json(Path(os.environ[WORKER_SETTINGS_ENV]).read_bytes())
    configure_logging(settings.log_level)
    HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s  # this worker's copy of the class
    app = create_app(settings)
    gc.collect()  # as in `serve`: keep start-up objects out of full collections
    gc.freeze()
    return app
