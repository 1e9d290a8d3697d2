"""A local server speaking OpenAI's fine-tuning HTTP API: the one thing the tests cannot run for real.

    python -m tests.distiller.fake_openai_ft --port 8123 --api-key sk-test [--run-s 0.6]

Routes (bearer auth on all of /v1): POST /v1/files (multipart), GET /v1/files/{id}, GET
/v1/files/{id}/content, POST /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id}, GET
/v1/fine_tuning/jobs/{id}/events (newest first, `after`/`limit` paging), POST
/v1/fine_tuning/jobs/{id}/cancel, POST /v1/chat/completions (a fine-tuned model only); /healthz without auth.

A job moves with the clock: validating_files → queued → running (a metrics event per step) →
succeeded with `fine_tuned_model: "ft:<model>:protege:<suffix>:<id>"`. Files are checked the way the
service does when validation ends: JSON lines, only the documented keys at the top level and in
messages (so a curation `metadata` key fails the job), known roles, an assistant message per example,
a minimum example count. Everything else is faked only at the HTTP level, in memory.

A succeeded job's `ft:` model answers chat completions as `tests.distiller.fake_tuned_model` describes, so that
the distiller can evaluate it through the service's own endpoint under its real name.
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

EXAMPLE_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "function_call", "weight"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
FINAL = {"succeeded", "failed", "cancelled"}


def _error(status: int, message: str, *, code: str | None = None, param: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def validate_examples(data: bytes, min_examples: int) -> str | None:
    """The service's complaint about a fine-tuning file, or None when it is fine."""
    try:
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        return "Invalid file format. The file must be UTF-8 encoded JSONL."
    for number, line in enumerate(lines, 1):
        try:
            example = json.loads(line)
        except ValueError:
            return f"Invalid file format. Line {number} is not valid JSON."
        if not isinstance(example, dict):
            return f"Invalid file format. Line {number} is not a JSON object."
        unknown = sorted(set(example) - EXAMPLE_KEYS)
        if unknown:
            return f"Invalid file format. Line {number}, key {unknown[0]!r}: Unrecognized key."
        messages = example.get("messages")
        if not isinstance(messages, list) or not messages:
            return f"Invalid file format. Line {number}: 'messages' must be a non-empty list."
        for index, message in enumerate(messages):
            where = f"Line {number}, message {index}"
            if not isinstance(message, dict):
                return f"Invalid file format. {where} is not an object."
            if message.get("role") not in ROLES:
                return f"Invalid file format. {where}: unrecognized role {message.get('role')!r}."
            extra = sorted(set(message) - MESSAGE_KEYS)
            if extra:
                return f"Invalid file format. {where}, key {extra[0]!r}: Unrecognized key."
        if not any(m.get("role") == "assistant" for m in messages):
            return f"Invalid file format. Line {number}: examples must have at least one assistant message."
    if len(lines) < min_examples:
        return f"Training file has {len(lines)} example(s), but must have at least {min_examples} examples."
    return None


@dataclass
class Timing:
    validate_s: float = 0.2
    queue_s: float = 0.2
    run_s: float = 0.6
    steps: int = 6
    min_examples: int = 10


@dataclass
class Job:
    body: dict[str, Any]
    created: float  # time.monotonic(), for the clock-driven states
    problem: tuple[str, str] | None  # (param, message) when a file is invalid
    id: str = field(default_factory=lambda: f"ftjob-{secrets.token_hex(12)}")
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating_files"
    events: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    steps_done: int = 0
    finished_at: int | None = None
    fine_tuned_model: str | None = None
    error: dict[str, Any] | None = None

    def event(self, message: str, *, level: str = "info", kind: str = "message", data: Any = None) -> None:
        self.events.append({"object": "fine_tuning.job.event", "id": f"ftevent-{secrets.token_hex(12)}",
                            "created_at": int(time.time()), "level": level, "message": message, "data": data,
                            "type": kind})

    def finish(self, status: str) -> None:
        self.status, self.finished_at = status, int(time.time())

    def advance(self, timing: Timing) -> None:
        """Move the job along the clock; terminal states stay put."""
        if self.status in FINAL:
            return
        age = time.monotonic() - self.created
        if age < timing.validate_s:
            return
        if self.problem is not None:
            param, message = self.problem
            code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
            self.error = {"code": code, "message": message, "param": param}
            self.event(message, level="error")
            self.finish("failed")
            return
        if self.status == "validating_files":
            self.status = "queued"
            self.event("Files validated, moving job to queued state")
        if age < timing.validate_s + timing.queue_s:
            return
        if self.status == "queued":
            self.status = "running"
            self.event("Fine-tuning job started")
        done = min(timing.steps, int((age - timing.validate_s - timing.queue_s) / timing.run_s * timing.steps))
        for step in range(self.steps_done + 1, done + 1):
            loss = round(2.0 / step, 4)
            self.event(f"Step {step}/{timing.steps}: training loss={loss}", kind="metrics",
                       data={"step": step, "total_steps": timing.steps, "train_loss": loss,
                             "train_mean_token_accuracy": round(1 - loss / 3, 4)})
        self.steps_done = max(self.steps_done, done)
        if done == timing.steps:
            suffix = self.body.get("suffix") or ""
            self.fine_tuned_model = f"ft:{self.body['model']}:protege:{suffix}:{self.id[6:14]}"
            self.event(f"New fine-tuned model created: {self.fine_tuned_model}")
            self.event("The job has successfully completed")
            self.finish("succeeded")

    def to_dict(self) -> dict[str, Any]:
        method = self.body.get("method") or {"type": "supervised", "supervised": {
            "hyperparameters": self.body.get("hyperparameters") or {}}}
        hyper = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
                 **(method.get("supervised") or {}).get("hyperparameters", {})}
        return {"object": "fine_tuning.job", "id": self.id, "model": self.body["model"],
                "created_at": self.created_at, "finished_at": self.finished_at,
                "fine_tuned_model": self.fine_tuned_model, "organization_id": "org-protege", "result_files": [],
                "status": self.status, "validation_file": self.body.get("validation_file"),
                "training_file": self.body["training_file"], "hyperparameters": hyper, "method": method,
                "trained_tokens": 1234 if self.status == "succeeded" else None, "error": self.error,
                "seed": self.body.get("seed") or 42, "estimated_finish": None, "integrations": [],
                "metadata": self.body.get("metadata"), "user_provided_suffix": self.body.get("suffix")}


def create_app(api_key: str, timing: Timing | None = None) -> FastAPI:
    app = FastAPI()
    app.state.timing = timing or Timing()
    files: dict[str, tuple[dict[str, Any], bytes]] = {}
    jobs: dict[str, Job] = {}

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        if request.url.path.startswith("/v1") and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        response: Response = await call_next(request)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/files")
    async def upload(request: Request) -> Response:
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile) or not isinstance(purpose, str):
            return _error(400, "'file' and 'purpose' are required.", param="file")
        data = await upload.read()
        meta: dict[str, Any] = {
            "object": "file", "id": f"file-{secrets.token_hex(12)}", "bytes": len(data), "created_at": int(time.time()),
            "filename": upload.filename or "upload.jsonl", "purpose": purpose, "status": "processed",
            "status_details": None}
        files[meta["id"]] = (meta, data)
        return JSONResponse(meta)

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> Response:
        if file_id not in files:
            return _error(404, f"No such File object: {file_id}", param="id")
        return JSONResponse(files[file_id][0])

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        if file_id not in files:
            return _error(404, f"No such File object: {file_id}", param="id")
        return Response(files[file_id][1], media_type="application/octet-stream")

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body.get("model"), str):
            return _error(400, "Missing required parameter: 'model'.", param="model")
        problem = None
        for param in ("training_file", "validation_file"):
            file_id = body.get(param)
            if file_id is None and param == "validation_file":
                continue
            if file_id not in files:
                return _error(400, f"invalid {param}: {file_id}", param=param, code="invalid_file")
            meta, data = files[file_id]
            if meta["purpose"] != "fine-tune":
                return _error(400, f"{file_id} has purpose {meta['purpose']!r}, not 'fine-tune'.", param=param)
            minimum = app.state.timing.min_examples if param == "training_file" else 1
            complaint = validate_examples(data, minimum)
            if complaint is not None and problem is None:
                problem = (param, f"The job failed due to an invalid {param.replace('_', ' ')}. {complaint}")
        job = Job(body, time.monotonic(), problem)
        job.event(f"Validating training file: {body['training_file']}")
        job.event(f"Created fine-tuning job: {job.id}")
        jobs[job.id] = job
        return JSONResponse(job.to_dict())

    def _job(job_id: str) -> Job | None:
        job = jobs.get(job_id)
        if job is not None:
            job.advance(app.state.timing)
        return job

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        job = _job(job_id)
        if job is None:
            return _error(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return JSONResponse(job.to_dict())

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def list_events(job_id: str, after: str | None = None, limit: int = 20) -> Response:
        job = _job(job_id)
        if job is None:
            return _error(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        newest_first = job.events[::-1]
        if after is not None:
            ids = [e["id"] for e in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        page = newest_first[:limit]
        return JSONResponse({"object": "list", "data": page, "has_more": len(newest_first) > limit})

    def _tuned(model: str) -> tuple[dict[str, str], str] | None:
        """What this model was trained on: a succeeded job's `ft:` model, or a base model (trained on nothing)."""
        job = next((j for j in jobs.values() if j.fine_tuned_model == model), None)
        if job is None:
            return None if all(j.body["model"] != model for j in jobs.values()) else ({}, BASE_ANSWER)
        return trained_answers(files[job.body["training_file"]][1])

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        tuned = _tuned(str(body.get("model")))
        if tuned is None:
            return _error(404, f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                          code="model_not_found", param="model")
        return JSONResponse(chat_completion(body, *tuned))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> Response:
        job = _job(job_id)
        if job is None:
            return _error(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        if job.status in FINAL:
            return _error(400, f"Job has already {job.status}.", param="fine_tuning_job_id")
        job.event("Fine-tuning job cancelled")
        job.finish("cancelled")
        return JSONResponse(job.to_dict())

    return app


def start_fake_openai_ft(log_dir: Path, api_key: str, *, run_s: float = 0.6) -> Server:
    """This module as a real server process on a free 127.0.0.1 port."""
    return start_fake_service("tests.distiller.fake_openai_ft", log_dir, "--api-key", api_key, "--run-s", str(run_s),
                              what="fake fine-tuning server")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--run-s", type=float, default=0.6, help="seconds a job spends running")
    args = parser.parse_args()
    uvicorn.run(create_app(args.api_key, Timing(run_s=args.run_s)), host=args.host, port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
