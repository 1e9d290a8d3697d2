"""Running the gateway: uvicorn around `create_app`, with the embedded model server when needed."""

from __future__ import annotations

import logging
from contextlib import ExitStack

import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from gateway.embedded import EmbeddedModelServer

log = logging.getLogger("protege")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    with ExitStack() as stack:
        if not settings.teachers:
            print("No teacher configured: starting the embedded model server (SmolLM2-135M-Instruct) as the "
                  "teacher. Pass --teacher provider/model to use a hosted model.", flush=True)
            embedded = EmbeddedModelServer(settings.embedded)
            stack.callback(embedded.stop)
            embedded.start()
            settings = settings.model_copy(update={"teachers": [embedded.teacher()]})
        teachers = ", ".join(f"{t.served_name} ({t.model})" for t in settings.teachers)
        print(f"Protégé gateway on http://{settings.host}:{settings.port}/v1 — teacher: {teachers}; "
              f"store: {settings.store}", flush=True)
        config = uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
            log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=30,
            timeout_keep_alive=30,
        )
        uvicorn.Server(config).run()
    return 0
