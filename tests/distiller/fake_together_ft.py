"""A local server speaking the part of Together AI's API the Together trainer uses: the one thing the tests
cannot run for real.

    python -m tests.distiller.fake_together_ft --port 8124 --api-key sk-test [--run-s 0.6]

Routes (bearer auth on all of /v1): POST /v1/files/upload (multipart: `file`, `file_name`, `purpose`
"fine-tune"), POST /v1/fine-tunes, GET /v1/fine-tunes/{id} (with its events, oldest first), POST
/v1/fine-tunes/{id}/cancel, POST /v1/chat/completions (a completed job's `model_output_name`, or its base
model); /healthz without auth. What it receives is validated as the service documents it: JSON lines of
chat examples (`messages` with known roles and an assistant turn), a known file id, a LoRA training type,
positive epochs, a suffix of at most 64 characters. A job moves with the clock: pending → queued → running
(an event per step) → completed with `model_output_name: "protege/<model>-<suffix>-<id>"`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from tests.distiller.fake_tuned_model import BASE_ANSWER, chat_completion, trained_answers
from tests.servers import Server, start_fake_service

ROLES = {"system", "user", "assistant", "tool"}
FINAL = {"completed", "error", "cancelled"}
STEPS = 4


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


def check_examples(data: bytes) -> str | None:
    """Why Together would refuse this file, or None."""
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        return "the file is empty"
    for number, line in enumerate(lines, 1):
        try:
            example = json.loads(line)
        except ValueError:
            return f"line {number} is not JSON"
        messages = example.get("messages") if isinstance(example, dict) else None
        if not isinstance(messages, list) or not messages:
            return f"line {number} has no 'messages'"
        if set(example) - {"messages", "tools"}:
            return f"line {number} has unknown keys {sorted(set(example) - {'messages', 'tools'})}"
        if any(not isinstance(m, dict) or m.get("role") not in ROLES for m in messages):
            return f"line {number} has a message with an unknown role"
        if not any(m.get("role") == "assistant" for m in messages):
            return f"line {number} has no assistant message"
    return None


@dataclass
class Job:
    body: dict[str, Any]
    started: float
    id: str = field(default_factory=lambda: f"ft-{secrets.token_hex(12)}")
    status: str = "pending"
    events: list[dict[str, Any]] = field(default_factory=list)
    output_name: str | None = None

    def event(self, message: str, kind: str, **numbers: int) -> None:
        self.events.append({"object": "fine-tune-event", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "message": message, "type": kind, **numbers})

    def advance(self, run_s: float) -> None:
        if self.status in FINAL:
            return
        age = time.monotonic() - self.started
        if self.status == "pending" and age > 0.1:
            self.status = "queued"
            self.event("Job queued", "job_queued")
        if self.status == "queued" and age > 0.2:
            self.status = "running"
            self.event("Training started", "job_start")
        if self.status != "running":
            return
        done = min(STEPS, int((age - 0.2) / run_s * STEPS))
        counted = sum(1 for e in self.events if e["type"] == "training_progress")
        for step in range(counted + 1, done + 1):
            self.event(f"Step {step}/{STEPS}", "training_progress", step=step, total_steps=STEPS)
        if done == STEPS:
            suffix = self.body.get("suffix") or "ft"
            self.output_name = f"protege/{self.body['model'].split('/')[-1]}-{suffix}-{self.id[3:11]}"
            self.status = "completed"
            self.event("Training completed", "job_complete")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "model": self.body["model"],
                "training_file": self.body["training_file"], "validation_file": self.body.get("validation_file"),
                "n_epochs": self.body.get("n_epochs", 1), "training_type": self.body["training_type"],
                "model_output_name": self.output_name, "events": self.events,
                "token_count": 4321 if self.status == "completed" else None,
                "total_price": 12 if self.status == "completed" else None}


def create_app(api_key: str, run_s: float = 0.6) -> FastAPI:
    app = FastAPI()
    files: dict[str, bytes] = {}
    jobs: dict[str, Job] = {}
    app.state.received = []  # every job body, for the tests

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        if request.url.path.startswith("/v1") and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "Invalid API key provided")
        response: Response = await call_next(request)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/files/upload")
    async def upload(request: Request) -> Response:
        form = await request.form()
        upload, name, purpose = form.get("file"), form.get("file_name"), form.get("purpose")
        if not isinstance(upload, UploadFile) or not isinstance(name, str) or not name:
            return _error(400, "'file' and 'file_name' are required")
        if purpose != "fine-tune":
            return _error(400, f"purpose must be 'fine-tune', not {purpose!r}")
        data = await upload.read()
        problem = check_examples(data)
        if problem is not None:
            return _error(400, f"invalid fine-tuning file {name}: {problem}")
        file_id = f"file-{secrets.token_hex(12)}"
        files[file_id] = data
        return JSONResponse({"id": file_id, "object": "file", "filename": name, "purpose": "fine-tune",
                             "bytes": len(data), "FileType": "jsonl", "Processed": True})

    @app.post("/v1/fine-tunes")
    async def create_job(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body.get("model"), str):
            return _error(400, "model is required")
        for param in ("training_file", "validation_file"):
            if (param == "training_file" or param in body) and body.get(param) not in files:
                return _error(400, f"{param} {body.get(param)!r} was not uploaded")
        if (body.get("training_type") or {}).get("type") not in ("Lora", "Full"):
            return _error(400, "training_type.type must be 'Lora' or 'Full'")
        epochs = body.get("n_epochs", 1)
        if not isinstance(epochs, int) or epochs < 1:
            return _error(400, "n_epochs must be a positive integer")
        if len(body.get("suffix") or "") > 64:
            return _error(400, "suffix must be at most 64 characters")
        app.state.received.append(body)
        job = Job(body, time.monotonic())
        job.event("Fine tune request created", "job_pending")
        jobs[job.id] = job
        return JSONResponse(job.to_dict())

    @app.get("/v1/fine-tunes/{job_id}")
    async def get_job(job_id: str) -> Response:
        job = jobs.get(job_id)
        if job is None:
            return _error(404, f"fine-tune job {job_id} not found")
        job.advance(run_s)
        return JSONResponse(job.to_dict())

    @app.post("/v1/fine-tunes/{job_id}/cancel")
    async def cancel_job(job_id: str) -> Response:
        job = jobs.get(job_id)
        if job is None:
            return _error(404, f"fine-tune job {job_id} not found")
        job.advance(run_s)
        if job.status in FINAL:
            return _error(400, f"job is already {job.status}")
        job.status = "cancelled"
        job.event("Job cancelled", "job_cancelled")
        return JSONResponse(job.to_dict())

    @app.get("/fake/received")
    async def received() -> Response:  # the job bodies, for tests (no auth: not part of Together's API)
        return JSONResponse(app.state.received)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model"))
        job = next((j for j in jobs.values() if j.output_name == model), None)
        if job is not None:
            return JSONResponse(chat_completion(body, *trained_answers(files[job.body["training_file"]])))
        if any(j.body["model"] == model for j in jobs.values()):
            return JSONResponse(chat_completion(body, {}, BASE_ANSWER))
        return _error(404, f"Unable to access model {model}")

    return app


def start_fake_together(log_dir: Path, api_key: str, *, run_s: float = 0.6) -> Server:
    """This module as a real server process on a free 127.0.0.1 port."""
    return start_fake_service("tests.distiller.fake_together_ft", log_dir, "--api-key", api_key, "--run-s",
                              str(run_s), what="fake Together server")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--run-s", type=float, default=0.6, help="seconds a job spends running")
    args = parser.parse_args()
    uvicorn.run(create_app(args.api_key, args.run_s), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
