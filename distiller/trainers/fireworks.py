"""Hosted LoRA fine-tuning on Fireworks AI, over its REST API with httpx (no SDK).

`launch` creates a dataset for train.jsonl (and one for validation.jsonl when it has examples)
(`POST /v1/accounts/{account}/datasets`), uploads the chat examples to it (`…/datasets/{id}:upload`,
multipart), waits until the service reports it READY, and creates a supervised fine-tuning job
(`POST …/supervisedFineTuningJobs`): a LoRA of `model` whose output model is named after the run. `poll` reads
the job (`GET …/supervisedFineTuningJobs/{id}`): its state and `jobProgress.percent`. A completed job's LoRA
does not answer requests until it is loaded somewhere: with `deploy = "serverless"` (the default) `poll` loads
it onto Fireworks' shared serverless pool (`POST …/deployedModels`, `serverless: true`; billed per token, the
base model's price) and reports the job running until that deployed model is DEPLOYED. Finding the deployed
model again by the output model's name (`GET …/deployedModels?filter=model="…"`) keeps `poll` stateless, so a
restarted distiller resumes where it was. The model then answers at Fireworks' OpenAI-compatible inference
endpoint (`inference_url`) as `accounts/{account}/models/{id}`; the distiller evaluates it there and the gateway
routes to it. With `deploy = "none"` the job succeeds as soon as training does and you deploy the model (a
dedicated deployment) before evaluating. `cancel` asks `POST …/supervisedFineTuningJobs/{id}:cancel` (what
`firectl supervised-fine-tuning-job cancel` calls). The API key comes from an environment variable and is
never stored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import httpx

from distiller.trainers.base import (
    JobState,
    JobStatus,
    TrainerConfig,
    TrainerError,
    TrainingJob,
    TrainingResult,
    dataset_hash,
    helped,
)
from distiller.trainers.openai_ft import upload_examples
from distiller.trainers.service_http import call, service_client

BACKEND = "fireworks"
UPLOAD_DIR = "upload"
Deploy = Literal["serverless", "none"]
# Fireworks' job states, reduced to the trainer interface's five (unknown ones are an error, not a guess)
_STATES: dict[str, JobState] = {
    "JOB_STATE_CREATING": "queued", "JOB_STATE_VALIDATING": "queued", "JOB_STATE_PENDING": "queued",
    "JOB_STATE_CREATING_INPUT_DATASET": "queued", "JOB_STATE_RE_QUEUEING": "queued", "JOB_STATE_IDLE": "queued",
    "JOB_STATE_PAUSED": "queued", "JOB_STATE_RUNNING": "running", "JOB_STATE_WRITING_RESULTS": "running",
    "JOB_STATE_CANCELLING": "running", "JOB_STATE_COMPLETED": "succeeded", "JOB_STATE_EARLY_STOPPED": "succeeded",
    "JOB_STATE_FAILED": "failed", "JOB_STATE_EXPIRED": "failed", "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_DELETING": "cancelled", "JOB_STATE_DELETING_CLEANING_UP": "cancelled", "JOB_STATE_DELETED": "cancelled"}
DATASET_READY_TIMEOUT_S = 120.0



@dataclass(frozen=True, slots=True)
class FireworksConfig(TrainerConfig):
    """A supervised LoRA fine-tuning job on Fireworks AI."""

    model: str = field(default="accounts/fireworks/models/llama-v3p1-8b-instruct", metadata=helped(
        "the base model to fine-tune (a Fireworks model name marked tunable)"))
    account_id: str | None = field(default=None, metadata=helped(
        "your Fireworks account id; None: $FIREWORKS_ACCOUNT_ID"))
    epochs: int | None = field(default=None, metadata=helped("passes over the training file; None: the service's"))
    learning_rate: float | None = field(default=None, metadata=helped("learning rate; None: the service's"))
    r: int | None = field(default=None, metadata=helped("LoRA rank (at most 64 to serve it serverless); None: the "
                                                         "service's"))
    suffix: str | None = field(default=None, metadata=helped(
        "the start of the output model's id (a random part follows); None: 'protege'"))
    deploy: Deploy = field(default="serverless", metadata=helped(
        "after training, load the LoRA onto Fireworks' serverless pool (billed per token) so it answers at "
        "inference_url; none: you deploy it"))
    base_url: str = field(default="https://api.fireworks.ai", metadata=helped(
        "Fireworks' control-plane API (datasets, jobs, deployed models)"))
    inference_url: str = field(default="https://api.fireworks.ai/inference/v1", metadata=helped(
        "Fireworks' OpenAI-compatible endpoint the trained model answers at"))
    api_key_env: str = field(default="FIREWORKS_API_KEY", metadata=helped(
        "the environment variable holding the API key (the key itself is never stored)"))
    timeout_s: float = field(default=120.0, metadata=helped("per-request timeout (uploads included)"))

    def __post_init__(self) -> None:
        self.require_positive("epochs", "learning_rate", "r")
        if self.deploy not in get_args(Deploy):
            raise ValueError(f"deploy must be one of {get_args(Deploy)}, not {self.deploy!r}")
        if self.suffix is not None and not (0 < len(self.suffix) <= 40 and _is_id(self.suffix)):
            raise ValueError("suffix must be 1-40 lowercase letters, digits or hyphens")


    def account(self) -> str:
        account = self.account_id or os.environ.get("FIREWORKS_ACCOUNT_ID")
        if not account:
            raise TrainerError("no Fireworks account: set account_id (--account-id) or $FIREWORKS_ACCOUNT_ID")
        return account

    def job_body(self, account: str, dataset: str, evaluation: str | None, output_model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"dataset": f"accounts/{account}/datasets/{dataset}", "baseModel": self.model,
                                "outputModel": f"accounts/{account}/models/{output_model}",
                                "displayName": output_model, "epochs": self.epochs,
                                "learningRate": self.learning_rate, "loraRank": self.r,
                                "evaluationDataset": evaluation and f"accounts/{account}/datasets/{evaluation}"}
        return {key: value for key, value in body.items() if value is not None}


def _is_id(text: str) -> bool:
    return all(c.islower() or c.isdigit() or c == "-" for c in text) and not text.startswith("-")


class FireworksTrainer:
    """Fine-tunes a LoRA on Fireworks AI; the artifact is the output model's name."""

    backend = BACKEND

    def __init__(self, config: FireworksConfig | None = None) -> None:
        self.config = config or FireworksConfig()

    def _client(self, base_url: str | None = None) -> httpx.Client:
        return service_client(base_url or self.config.base_url, self.config.api_key_env, self.config.timeout_s)

    def launch(self, dataset_dir: Path, run_dir: Path) -> TrainingJob:
        dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
        account = self.config.account()
        train = upload_examples(dataset_dir / "train.jsonl")
        if not train:
            raise TrainerError(f"{dataset_dir / 'train.jsonl'} has no examples")
        validation = upload_examples(dataset_dir / "validation.jsonl")
        upload = run_dir / UPLOAD_DIR
        upload.mkdir(parents=True, exist_ok=True)
        run_id = secrets.token_hex(4)  # ids are unique per account: one run's resources share a random part
        prefix = f"v1/accounts/{account}"
        with self._client() as client:
            dataset = _upload(client, prefix, f"protege-{run_id}-train", upload / "train.jsonl", train)
            evaluation = (_upload(client, prefix, f"protege-{run_id}-validation", upload / "validation.jsonl",
                                  validation) if validation else None)
            for name in filter(None, (dataset, evaluation)):
                _wait_ready(client, prefix, name, min(self.config.timeout_s, DATASET_READY_TIMEOUT_S))
            output_model = f"{self.config.suffix or 'protege'}-{run_id}"
            created = call(client, "POST", f"{prefix}/supervisedFineTuningJobs", "create the fine-tuning job",
                            json=self.config.job_body(account, dataset, evaluation, output_model))
        job_id = str(created.get("name", "")).rsplit("/", 1)[-1]
        if not job_id:
            raise TrainerError(f"the service created a job without a name: {created!r:.200}")
        job = TrainingJob(backend=BACKEND, job_id=job_id, run_dir=str(run_dir), details={
            "model": self.config.model, "account_id": account, "dataset": dataset, "evaluation_dataset": evaluation,
            "output_model": f"accounts/{account}/models/{output_model}",
            # the trained model answers at the inference endpoint, not at the control plane that trained it
            "base_url": self.config.inference_url, "control_url": self.config.base_url,
            "dataset_dir": str(dataset_dir), "dataset_hash": dataset_hash(dataset_dir),
            "examples": {"train": len(train), "validation": len(validation)}, "config": self.config.to_dict()})
        job.save()
        return job

    def poll(self, job: TrainingJob) -> JobStatus:
        prefix = f"v1/accounts/{job.details['account_id']}"
        with self._client(job.details.get("control_url")) as client:
            remote = call(client, "GET", f"{prefix}/supervisedFineTuningJobs/{job.job_id}",
                           f"read fine-tuning job {job.job_id}")
            status = _status(remote)
            if status.state != "succeeded" or self.config.deploy == "none" or status.result is None:
                return status
            return _deployed(client, prefix, status)

    def cancel(self, job: TrainingJob) -> None:
        prefix = f"v1/accounts/{job.details['account_id']}"
        with self._client(job.details.get("control_url")) as client:
            path = f"{prefix}/supervisedFineTuningJobs/{job.job_id}"
            remote = call(client, "GET", path, f"read fine-tuning job {job.job_id}")
            if _STATES.get(str(remote.get("state"))) in ("succeeded", "failed", "cancelled"):
                return  # already over: nothing to cancel
            call(client, "POST", f"{path}:cancel", f"cancel fine-tuning job {job.job_id}", json={})


def _obj(value: object) -> dict[str, Any]:
    """A JSON object field of an answer, or {} when the service left it out (or sent something else)."""
    return value if isinstance(value, dict) else {}


def _upload(client: httpx.Client, prefix: str, dataset_id: str, path: Path, examples: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples).encode("utf-8")
    path.write_bytes(data)  # what was sent, for audits and retries
    call(client, "POST", f"{prefix}/datasets", f"create dataset {dataset_id}",
          json={"datasetId": dataset_id, "dataset": {"userUploaded": {}, "format": "CHAT",
                                                     "exampleCount": str(len(examples))}})
    call(client, "POST", f"{prefix}/datasets/{dataset_id}:upload", f"upload {path.name}",
          files={"file": (path.name, data, "application/jsonl")})
    return dataset_id


def _wait_ready(client: httpx.Client, prefix: str, dataset_id: str, timeout_s: float) -> None:
    """Fireworks validates an upload before a job may use it: wait for READY (a refusal says why)."""
    deadline = time.monotonic() + timeout_s
    while True:
        dataset = call(client, "GET", f"{prefix}/datasets/{dataset_id}", f"read dataset {dataset_id}")
        state = str(dataset.get("state"))
        if state == "READY":
            return
        status = _obj(dataset.get("status"))
        if status.get("code") not in (None, "OK"):
            raise TrainerError(f"the service refused dataset {dataset_id}: {status.get('message') or status}")
        if time.monotonic() > deadline:
            raise TrainerError(f"dataset {dataset_id} is still {state} after {timeout_s:.0f} s")
        time.sleep(0.2)


def _status(remote: dict[str, Any]) -> JobStatus:
    """A JobStatus from Fireworks' supervised fine-tuning job object."""
    state_name = str(remote.get("state"))
    state = _STATES.get(state_name)
    if state is None:
        raise TrainerError(f"unknown fine-tuning job state {state_name!r}")
    progress_info = _obj(remote.get("jobProgress"))
    percent = progress_info.get("percent")
    progress = min(1.0, max(0.0, float(percent) / 100)) if isinstance(percent, int | float) else 0.0
    status = _obj(remote.get("status"))
    message = str(status.get("message") or state_name.removeprefix("JOB_STATE_").lower().replace("_", " "))
    details = {"state": state_name, **({"epoch": progress_info["epoch"]} if "epoch" in progress_info else {})}
    if state == "failed":
        return JobStatus("failed", progress, message, error=message or "the fine-tuning job failed", details=details)
    if state != "succeeded":
        return JobStatus(state, progress, message, details=details)
    name = remote.get("outputModel")
    if not name:
        return JobStatus("failed", progress, message, error="the job completed without an outputModel",
                         details=details)
    result = TrainingResult(artifact=str(name), model_name=str(name), base_model=str(remote.get("baseModel")),
                            metrics={"trained_tokens": None})  # the job object does not count trained tokens
    return JobStatus("succeeded", 1.0, message, result=result, details=details)


def _deployed(client: httpx.Client, prefix: str, trained: JobStatus) -> JobStatus:
    """`trained` once its LoRA answers on serverless; until then "running", loading it when nobody has."""
    assert trained.result is not None
    model = trained.result.model_name
    listed = call(client, "GET", f"{prefix}/deployedModels", f"list the deployed models of {model}",
                   params={"filter": f'model="{model}"'})
    deployed = [d for d in listed.get("deployedModels") or [] if isinstance(d, dict) and d.get("model") == model]
    if not deployed:
        created = call(client, "POST", f"{prefix}/deployedModels", f"load {model} onto serverless",
                        json={"model": model, "serverless": True, "displayName": model.rsplit("/", 1)[-1]})
        deployed = [created]
    state = str(deployed[0].get("state"))
    details = {**trained.details, "deployed_model": deployed[0].get("name"), "deployment_state": state}
    if state == "DEPLOYED":
        return dataclasses.replace(trained, message="trained and deployed on serverless", details=details)
    status = _obj(deployed[0].get("status"))
    if status.get("code") not in (None, "OK"):
        error = f"the trained LoRA could not be loaded onto serverless: {status.get('message') or status}"
        return JobStatus("failed", 1.0, error, error=error, details=details)
    return JobStatus("running", 0.99, f"trained; loading onto serverless ({state.lower()})", details=details)
