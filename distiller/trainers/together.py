"""Hosted LoRA fine-tuning on Together AI, over its REST API with httpx (no SDK).

`launch` uploads train.jsonl (and validation.jsonl when it has examples) as chat fine-tuning examples
(`POST /files/upload`, multipart, purpose `fine-tune`) and creates a LoRA job (`POST /fine-tunes`); `poll`
reads the job (`GET /fine-tunes/{id}`): its status, the newest event that counts steps for progress, and, once
completed, `model_output_name` — the name the trained model is served under on Together's OpenAI-compatible
chat endpoint, where the distiller evaluates it and the gateway routes to it. `cancel` asks
`POST /fine-tunes/{id}/cancel`. The API key comes from an environment variable and is never stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

BACKEND = "together"
UPLOAD_DIR = "upload"
# Together's job statuses, reduced to the trainer interface's five
_STATES: dict[str, JobState] = {
    "pending": "queued", "queued": "queued", "running": "running", "compressing": "running",
    "uploading": "running", "cancel_requested": "running", "completed": "succeeded", "error": "failed",
    "user_error": "failed", "cancelled": "cancelled"}



@dataclass(frozen=True, slots=True)
class TogetherConfig(TrainerConfig):
    """A LoRA fine-tuning job on Together AI."""

    model: str = field(default="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference", metadata=helped(
        "the base model to fine-tune (a Together model id that supports LoRA fine-tuning)"))
    epochs: int | None = field(default=None, metadata=helped("passes over the training file; None: the service's"))
    batch_size: int | None = field(default=None, metadata=helped("batch size; None: 'max' (the service's default)"))
    learning_rate: float | None = field(default=None, metadata=helped("peak learning rate; None: the service's"))
    r: int | None = field(default=None, metadata=helped("LoRA rank (alpha is twice it); None: the service's"))
    suffix: str | None = field(default=None, metadata=helped("up to 64 characters added to the model's name"))
    base_url: str = field(default="https://api.together.xyz/v1", metadata=helped("Together's API base URL"))
    api_key_env: str = field(default="TOGETHER_API_KEY", metadata=helped(
        "the environment variable holding the API key (the key itself is never stored)"))
    timeout_s: float = field(default=120.0, metadata=helped("per-request timeout (uploads included)"))

    def __post_init__(self) -> None:
        self.require_positive("epochs", "batch_size", "learning_rate", "r")
        if self.suffix is not None and not 0 < len(self.suffix) <= 64:
            raise ValueError("suffix must be 1-64 characters")


    def job_body(self, training_file: str, validation_file: str | None) -> dict[str, Any]:
        lora: dict[str, Any] = {"type": "Lora"}
        if self.r is not None:
            lora |= {"lora_r": self.r, "lora_alpha": 2 * self.r}
        body: dict[str, Any] = {"training_file": training_file, "model": self.model, "training_type": lora,
                                "validation_file": validation_file, "n_epochs": self.epochs,
                                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                                "suffix": self.suffix}
        if validation_file is not None:
            body["n_evals"] = 1
        return {key: value for key, value in body.items() if value is not None}


class TogetherTrainer:
    """Fine-tunes a LoRA on Together AI; the artifact is the output model's name."""

    backend = BACKEND

    def __init__(self, config: TogetherConfig | None = None) -> None:
        self.config = config or TogetherConfig()

    def _client(self, base_url: str | None = None) -> httpx.Client:
        return service_client(base_url or self.config.base_url, self.config.api_key_env, self.config.timeout_s)

    def launch(self, dataset_dir: Path, run_dir: Path) -> TrainingJob:
        dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
        train = upload_examples(dataset_dir / "train.jsonl")
        if not train:
            raise TrainerError(f"{dataset_dir / 'train.jsonl'} has no examples")
        validation = upload_examples(dataset_dir / "validation.jsonl")
        upload = run_dir / UPLOAD_DIR
        upload.mkdir(parents=True, exist_ok=True)
        with self._client() as client:
            training_file = _upload(client, upload / "train.jsonl", train)
            validation_file = _upload(client, upload / "validation.jsonl", validation) if validation else None
            created = call(client, "POST", "fine-tunes", "create the fine-tuning job",
                            json=self.config.job_body(training_file, validation_file))
        job = TrainingJob(backend=BACKEND, job_id=str(created["id"]), run_dir=str(run_dir), details={
            "model": self.config.model, "training_file": training_file, "validation_file": validation_file,
            "base_url": self.config.base_url, "dataset_dir": str(dataset_dir),
            "dataset_hash": dataset_hash(dataset_dir), "examples": {"train": len(train), "validation": len(validation)},
            "config": self.config.to_dict()})
        job.save()
        return job

    def poll(self, job: TrainingJob) -> JobStatus:
        with self._client(job.details.get("base_url")) as client:
            remote = call(client, "GET", f"fine-tunes/{job.job_id}", f"read fine-tuning job {job.job_id}")
        return _status(remote)

    def cancel(self, job: TrainingJob) -> None:
        with self._client(job.details.get("base_url")) as client:
            remote = call(client, "GET", f"fine-tunes/{job.job_id}", f"read fine-tuning job {job.job_id}")
            if _STATES.get(str(remote.get("status"))) in ("succeeded", "failed", "cancelled"):
                return  # already over: nothing to cancel
            call(client, "POST", f"fine-tunes/{job.job_id}/cancel", f"cancel fine-tuning job {job.job_id}")


def _upload(client: httpx.Client, path: Path, examples: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples).encode("utf-8")
    path.write_bytes(data)  # what was sent, for audits and retries
    uploaded = call(client, "POST", "files/upload", f"upload {path.name}",
                     files={"file": (path.name, data, "application/jsonl")},
                     data={"file_name": path.name, "purpose": "fine-tune"})
    return str(uploaded["id"])


def _status(remote: dict[str, Any]) -> JobStatus:
    """A JobStatus from Together's job object (its `events` oldest first)."""
    status = str(remote.get("status"))
    state = _STATES.get(status)
    if state is None:
        raise TrainerError(f"unknown fine-tuning job status {status!r}")
    events = [e for e in remote.get("events") or [] if isinstance(e, dict)]
    counted = next((e for e in reversed(events) if e.get("step") and e.get("total_steps")), None)
    progress = min(1.0, counted["step"] / counted["total_steps"]) if counted else 0.0
    message = str(events[-1].get("message") or status) if events else status
    details = {"status": status, "token_count": remote.get("token_count"), "total_price": remote.get("total_price"),
               **({"step": counted["step"], "total_steps": counted["total_steps"]} if counted else {})}
    details = {key: value for key, value in details.items() if value is not None}
    if state == "failed":
        return JobStatus("failed", progress, message, error=message or "the fine-tuning job failed", details=details)
    if state != "succeeded":
        return JobStatus(state, progress, message, details=details)
    name = remote.get("model_output_name")
    if not name:
        return JobStatus("failed", progress, message, error="the job completed without a model_output_name",
                         details=details)
    tokens = remote.get("token_count")
    result = TrainingResult(artifact=str(name), model_name=str(name), base_model=str(remote.get("model")),
                            metrics={"trained_tokens": tokens if isinstance(tokens, int) else None,
                                     "total_price": remote.get("total_price")})
    return JobStatus("succeeded", 1.0, message, result=result, details=details)
