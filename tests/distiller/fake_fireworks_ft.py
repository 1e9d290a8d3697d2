"""A local server speaking the part of Fireworks AI's API the Fireworks trainer uses: the one thing the tests
cannot run for real.

    python -m tests.distiller.fake_fireworks_ft --port 8125 --api-key fw-test --account acme [--run-s 0.6]

Routes (bearer auth on /v1 and /inference), all under /v1/accounts/{account} for the one account it knows:
POST datasets, POST datasets/{id}:upload (multipart `file`), GET datasets/{id}, POST supervisedFineTuningJobs,
GET supervisedFineTuningJobs/{id}, POST supervisedFineTuningJobs/{id}:cancel, GET deployedModels (with
`filter=model="…"`), POST deployedModels; and POST /inference/v1/chat/completions, where a deployed output model
answers as its training file taught it and a base model with `BASE_ANSWER`. What it receives is validated as
the service documents it: dataset ids of lowercase letters, digits and hyphens, chat JSON lines, a job only on
a READY dataset (an upload is validated for a moment first), an output model named in the account, positive
epochs and learning rate, a LoRA rank of at most 64 to load serverless, a deployed model only of a completed
job's output. A job moves with the clock: CREATING → PENDING → RUNNING (percent rising) → COMPLETED; a
deployed model is DEPLOYING for a moment, then DEPLOYED.
"""

from __future__ import annotations

import argparse
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from tests.distiller.fake_together_ft import check_examples
from tests.distiller.fake_tuned_model import BASE_ANSWER, chat_completion, trained_answers
from tests.servers import Server, start_fake_service

ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
FINAL = {"JOB_STATE_COMPLETED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
VALIDATING_S = 0.3
DEPLOYING_S = 0.5


def _error(status: int, message: str) -> JSONResponse:
    code = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}.get(status, "UNKNOWN")
    return JSONResponse({"code": code, "message": message}, status_code=status)


@dataclass
class Dataset:
    id: str
    uploaded_at: float | None = None
    data: bytes = b""

    def state(self) -> str:
        if self.uploaded_at is None:
            return "UPLOADING"
        return "READY" if time.monotonic() - self.uploaded_at > VALIDATING_S else "UPLOADING"


@dataclass
class Job:
    body: dict[str, Any]
    started: float
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "JOB_STATE_CREATING"
    percent: float = 0.0

    def advance(self, run_s: float) -> None:
        if self.state in FINAL:
            return
        age = time.monotonic() - self.started
        if age > 0.1:
            self.state = "JOB_STATE_PENDING"
        if age > 0.2:
            self.state = "JOB_STATE_RUNNING"
            self.percent = min(100.0, round((age - 0.2) / run_s * 100, 1))
        if self.percent >= 100:
            self.state = "JOB_STATE_COMPLETED"

    def to_dict(self, account: str) -> dict[str, Any]:
        return {"name": f"accounts/{account}/supervisedFineTuningJobs/{self.id}", "state": self.state,
                "status": {"code": "OK", "message": ""}, "dataset": self.body["dataset"],
                "baseModel": self.body["baseModel"], "outputModel": self.body["outputModel"],
                "epochs": self.body.get("epochs", 1), "loraRank": self.body.get("loraRank", 8),
                "jobProgress": {"percent": self.percent, "epoch": 0}, "createTime": "2026-12-03T00:00:00Z"}


@dataclass
class Deployed:
    model: str
    created: float
    id: str = field(default_factory=lambda: secrets.token_hex(6))

    def to_dict(self, account: str) -> dict[str, Any]:
        state = "DEPLOYED" if time.monotonic() - self.created > DEPLOYING_S else "DEPLOYING"
        return {"name": f"accounts/{account}/deployedModels/{self.id}", "model": self.model, "serverless": True,
                "state": state, "status": {"code": "OK", "message": ""}, "default": True}


def create_app(api_key: str, account: str, run_s: float = 0.6) -> FastAPI:
    app = FastAPI()
    datasets: dict[str, Dataset] = {}
    jobs: dict[str, Job] = {}
    deployed: dict[str, Deployed] = {}
    app.state.received = []  # every job body, for the tests
    prefix = f"/v1/accounts/{account}"

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path.startswith(("/v1", "/inference")) and request.headers.get("authorization") != f"Bearer {api_key}":
            return _error(401, "invalid API key")
        if path.startswith("/v1/accounts/") and not path.startswith(prefix + "/"):
            return _error(404, "account not found")  # an account the key does not belong to
        response: Response = await call_next(request)
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(f"{prefix}/datasets")
    async def create_dataset(request: Request) -> Response:
        body = await request.json()
        dataset_id = body.get("datasetId")
        if not isinstance(dataset_id, str) or not ID.match(dataset_id):
            return _error(400, f"datasetId must be lowercase letters, digits and hyphens, not {dataset_id!r}")
        if dataset_id in datasets:
            return _error(409, f"dataset {dataset_id} already exists")
        if not isinstance((body.get("dataset") or {}).get("userUploaded"), dict):
            return _error(400, "dataset.userUploaded is required for an uploaded dataset")
        datasets[dataset_id] = Dataset(dataset_id)
        return JSONResponse({"name": f"accounts/{account}/datasets/{dataset_id}", "state": "UPLOADING",
                             "status": {"code": "OK", "message": ""}})

    @app.post(prefix + "/datasets/{dataset_id}:upload")
    async def upload(dataset_id: str, request: Request) -> Response:
        dataset = datasets.get(dataset_id)
        if dataset is None:
            return _error(404, f"dataset {dataset_id} not found")
        form = await request.form()
        file = form.get("file")
        if not isinstance(file, UploadFile):
            return _error(400, "a multipart 'file' is required")
        data = await file.read()
        problem = check_examples(data)
        if problem is not None:
            return _error(400, f"invalid dataset file: {problem}")
        dataset.data, dataset.uploaded_at = data, time.monotonic()
        return JSONResponse({"filenameToSignedUrls": {}})

    @app.get(prefix + "/datasets/{dataset_id}")
    async def get_dataset(dataset_id: str) -> Response:
        dataset = datasets.get(dataset_id)
        if dataset is None:
            return _error(404, f"dataset {dataset_id} not found")
        return JSONResponse({"name": f"accounts/{account}/datasets/{dataset_id}", "state": dataset.state(),
                             "status": {"code": "OK", "message": ""}})

    def ready_dataset(name: object) -> str | None:
        """Why a job cannot use dataset `name`, or None."""
        dataset = datasets.get(str(name).removeprefix(f"accounts/{account}/datasets/"))
        if dataset is None or not str(name).startswith(f"accounts/{account}/datasets/"):
            return f"dataset {name!r} not found"
        return None if dataset.state() == "READY" else f"dataset {name} is not READY ({dataset.state()})"

    @app.post(f"{prefix}/supervisedFineTuningJobs")
    async def create_job(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body.get("baseModel"), str) or not body["baseModel"].startswith("accounts/"):
            return _error(400, "baseModel must be a model name (accounts/…/models/…)")
        for param in ("dataset", "evaluationDataset"):
            if param == "dataset" or param in body:
                problem = ready_dataset(body.get(param))
                if problem is not None:
                    return _error(400, problem)
        output = str(body.get("outputModel") or "")
        if not output.startswith(f"accounts/{account}/models/") or not ID.match(output.rsplit("/", 1)[-1]):
            return _error(400, f"outputModel must be accounts/{account}/models/<id>, not {output!r}")
        if any(j.body["outputModel"] == output for j in jobs.values()):
            return _error(409, f"model {output} already exists")
        epochs = body.get("epochs", 1)
        if not isinstance(epochs, int) or epochs < 1:
            return _error(400, "epochs must be a positive integer")
        if "learningRate" in body and not (isinstance(body["learningRate"], int | float) and body["learningRate"] > 0):
            return _error(400, "learningRate must be positive")
        rank = body.get("loraRank", 8)
        if not isinstance(rank, int) or not 1 <= rank <= 256:
            return _error(400, "loraRank must be 1-256")
        app.state.received.append(body)
        job = Job(body, time.monotonic())
        jobs[job.id] = job
        return JSONResponse(job.to_dict(account))

    @app.get(prefix + "/supervisedFineTuningJobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        job = jobs.get(job_id)
        if job is None:
            return _error(404, f"supervised fine-tuning job {job_id} not found")
        job.advance(run_s)
        return JSONResponse(job.to_dict(account))

    @app.post(prefix + "/supervisedFineTuningJobs/{job_id}:cancel")
    async def cancel_job(job_id: str) -> Response:
        job = jobs.get(job_id)
        if job is None:
            return _error(404, f"supervised fine-tuning job {job_id} not found")
        job.advance(run_s)
        if job.state in FINAL:
            return _error(400, f"job is already {job.state}")
        job.state = "JOB_STATE_CANCELLED"
        return JSONResponse({})

    @app.get(f"{prefix}/deployedModels")
    async def list_deployed(request: Request) -> Response:
        wanted = re.fullmatch(r'model="([^"]+)"', request.query_params.get("filter", ""))
        rows = [d for d in deployed.values() if wanted is None or d.model == wanted.group(1)]
        return JSONResponse({"deployedModels": [d.to_dict(account) for d in rows], "totalSize": len(rows)})

    @app.post(f"{prefix}/deployedModels")
    async def deploy(request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model"))
        job = next((j for j in jobs.values() if j.body["outputModel"] == model), None)
        if job is None or job.state != "JOB_STATE_COMPLETED":
            return _error(400, f"model {model} is not a READY LoRA of this account")
        if body.get("serverless") is not True and not body.get("deployment"):
            return _error(400, "serverless must be true unless a deployment is named")
        if job.body.get("loraRank", 8) > 64:
            return _error(400, "serverless LoRAs must have rank 64 or lower")
        if any(d.model == model for d in deployed.values()):
            return _error(409, f"{model} is already deployed")
        item = Deployed(model, time.monotonic())
        deployed[item.id] = item
        return JSONResponse(item.to_dict(account))

    @app.get("/fake/received")
    async def received() -> Response:  # the job bodies, for tests (no auth: not part of Fireworks' API)
        return JSONResponse(app.state.received)

    @app.post("/inference/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model"))
        live = any(d.model == model and d.to_dict(account)["state"] == "DEPLOYED" for d in deployed.values())
        job = next((j for j in jobs.values() if j.body["outputModel"] == model), None)
        if job is not None and live:
            dataset = datasets[job.body["dataset"].rsplit("/", 1)[-1]]
            return JSONResponse(chat_completion(body, *trained_answers(dataset.data)))
        if job is None and any(j.body["baseModel"] == model for j in jobs.values()):
            return JSONResponse(chat_completion(body, {}, BASE_ANSWER))
        return _error(404, f"Model not found, inaccessible, and/or not deployed: {model}")

    return app


def start_fake_fireworks(log_dir: Path, api_key: str, account: str, *, run_s: float = 0.6) -> Server:
    """This module as a real server process on a free 127.0.0.1 port."""
    return start_fake_service("tests.distiller.fake_fireworks_ft", log_dir, "--api-key", api_key, "--account",
                              account, "--run-s", str(run_s), what="fake Fireworks server")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--run-s", type=float, default=0.6, help="seconds a job spends running")
    args = parser.parse_args()
    uvicorn.run(create_app(args.api_key, args.account, args.run_s), host=args.host, port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
