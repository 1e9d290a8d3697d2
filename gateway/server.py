"""Running the gateway: uvicorn around `create_app`, with the embedded model server when needed."""

from __future__ import annotations

import gc
import logging
import signal
from contextlib import ExitStack

import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from gateway.embedded import EmbeddedModelServer

log = logging.getLogger("protege")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one line per upstream call is noise (and costs time on the hot path)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    with ExitStack() as stack:
        if not settings.teachers:
            print("No teacher configured: starting the embedded model server (SmolLM2-135M-Instruct) as the "
                  "teacher. Pass --teacher provider/model to use a hosted model.", flush=True)
            embedded = EmbeddedModelServer(settings.embedded)
            stack.callback(embedded.stop)
            embedded.start()
            # the embedded server is also where local students (LoRA adapters) are served
            settings = settings.model_copy(update={"teachers": [embedded.teacher()],
                                                   "student_api_base": settings.student_api_base or embedded.api_base})
        teachers = ", ".join(f"{t.served_name} ({t.model})" for t in settings.teachers)
        print(f"Protégé gateway on http://{settings.host}:{settings.port}/v1 — teacher: {teachers}; "
              f"store: {settings.store}", flush=True)
        config = uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
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
        server.run()
    return 0


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)
