"""Hosted fine-tuning through OpenAI's API (or any service speaking it), with the official `openai` SDK.

`launch` uploads train.jsonl (and validation.jsonl when it has examples) as pure chat fine-tuning
examples — the curation `metadata` and response-only message fields removed, since the service rejects
unknown keys — to `run_dir/upload/` and then to the service, and creates a supervised job. `poll` reads
the job and its newest events: the latest metrics event gives progress, the latest event the message,
the job's `error` the failure, `fine_tuned_model` (`ft:...`) the result, served under that same name.

The SDK is imported inside functions: the distiller imports this module even when another backend runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distiller.trainers.base import (
    JobState,
    JobStatus,
    TrainerConfig,
    TrainerError,
    TrainingJob,
    TrainingResult,
    config_from_dict,
    dataset_hash,
    examples_without_metadata,
    helped,
)

BACKEND = "openai"
UPLOAD_DIR = "upload"
# Chat Completions response fields that are not part of a fine-tuning example's messages.
RESPONSE_ONLY_KEYS = ("refusal", "annotations", "audio")
_STATES: dict[str, JobState] = {"validating_files": "queued", "queued": "queued", "running": "running",
                                "succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}



@dataclass(frozen=True, slots=True)
class OpenAIFineTuningConfig(TrainerConfig):
    """A supervised fine-tuning job on OpenAI's API (or a compatible service at `base_url`)."""

    model: str = field(default="gpt-4o-mini-2024-07-18", metadata=helped("the base model to fine-tune"))
    epochs: int | None = field(default=None, metadata=helped(
        "passes over the training file (sent as n_epochs); None: the service picks ('auto')"))
    batch_size: int | None = field(default=None, metadata=helped("batch size; None: 'auto'"))
    learning_rate_multiplier: float | None = field(default=None, metadata=helped(
        "scales the service's base learning rate; None: 'auto'"))
    suffix: str | None = field(default=None, metadata=helped(
        "up to 64 characters included in the fine-tuned model's name (ft:<model>:<org>:<suffix>:<id>)"))
    seed: int | None = field(default=None, metadata=helped("the service's training seed; None: random"))
    base_url: str | None = field(default=None, metadata=helped(
        "API base URL, e.g. https://api.openai.com/v1; None: the SDK's default ($OPENAI_BASE_URL or OpenAI)"))
    api_key_env: str = field(default="OPENAI_API_KEY", metadata=helped(
        "the environment variable holding the API key (the key itself is never stored)"))
    timeout_s: float = field(default=120.0, metadata=helped("per-request timeout (uploads included)"))
    max_retries: int = field(default=2, metadata=helped("SDK retries on connection errors, 429 and 5xx"))

    def __post_init__(self) -> None:
        self.require_positive("epochs", "batch_size", "learning_rate_multiplier")
        if self.suffix is not None and not 0 < len(self.suffix) <= 64:
            raise ValueError("suffix must be 1-64 characters")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenAIFineTuningConfig:
        if "n_epochs" in data:  # the service's name for it, as configs before 2026-12 spelled it
            data = {**{k: v for k, v in data.items() if k != "n_epochs"}, "epochs": data["n_epochs"]}
        return config_from_dict(cls, data)


    def hyperparameters(self) -> dict[str, Any]:
        values = {"n_epochs": self.epochs, "batch_size": self.batch_size,
                  "learning_rate_multiplier": self.learning_rate_multiplier}
        return {key: value for key, value in values.items() if value is not None}


def upload_examples(path: Path) -> list[dict[str, Any]]:
    """A dataset split as the service expects it: no `metadata`, no response-only message fields."""
    examples = examples_without_metadata(path)
    for example in examples:
        example["messages"] = [{key: value for key, value in message.items() if key not in RESPONSE_ONLY_KEYS}
                               if isinstance(message, dict) else message for message in example.get("messages", [])]
    return examples


def _jsonl(examples: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples).encode("utf-8")


class OpenAIFineTuningTrainer:
    """Fine-tunes on OpenAI's hosted service; the artifact is the `ft:...` model id."""

    backend = BACKEND

    def __init__(self, config: OpenAIFineTuningConfig | None = None) -> None:
        self.config = config or OpenAIFineTuningConfig()

    def _client(self, base_url: str | None = None) -> Any:
        import openai

        key = os.environ.get(self.config.api_key_env)
        if not key:
            raise TrainerError(f"no API key: set ${self.config.api_key_env}")
        return openai.OpenAI(api_key=key, base_url=base_url or self.config.base_url, timeout=self.config.timeout_s,
                             max_retries=self.config.max_retries)

    def launch(self, dataset_dir: Path, run_dir: Path) -> TrainingJob:
        dataset_dir, run_dir = Path(dataset_dir), Path(run_dir)
        train = upload_examples(dataset_dir / "train.jsonl")
        if not train:
            raise TrainerError(f"{dataset_dir / 'train.jsonl'} has no examples")
        validation = upload_examples(dataset_dir / "validation.jsonl")
        upload = run_dir / UPLOAD_DIR
        upload.mkdir(parents=True, exist_ok=True)
        with self._client() as client:
            remote, training_file, validation_file = self._create(client, upload, train, validation)
            base_url = str(client.base_url)
        job = TrainingJob(backend=BACKEND, job_id=str(remote.id), run_dir=str(run_dir), details={
            "model": self.config.model, "training_file": training_file, "validation_file": validation_file,
            "base_url": base_url, "suffix": self.config.suffix, "dataset_dir": str(dataset_dir),
            "dataset_hash": dataset_hash(dataset_dir), "examples": {"train": len(train), "validation": len(validation)},
            "config": self.config.to_dict()})
        job.save()
        return job

    def _create(self, client: Any, upload: Path, train: list[dict[str, Any]],
                validation: list[dict[str, Any]]) -> tuple[Any, str, str | None]:
        """Upload the files and create the job: (the job object, training file id, validation file id)."""
        import openai

        try:
            training_file = self._upload(client, upload / "train.jsonl", train)
            validation_file = self._upload(client, upload / "validation.jsonl", validation) if validation else None
            method = {"type": "supervised", "supervised": {"hyperparameters": self.config.hyperparameters()}}
            options: dict[str, Any] = {"validation_file": validation_file, "suffix": self.config.suffix,
                                       "seed": self.config.seed}
            remote = client.fine_tuning.jobs.create(model=self.config.model, training_file=training_file,
                                                    method=method,
                                                    **{k: v for k, v in options.items() if v is not None})
        except openai.OpenAIError as exc:
            raise TrainerError(f"could not create the fine-tuning job: {exc}") from exc
        return remote, training_file, validation_file

    @staticmethod
    def _upload(client: Any, path: Path, examples: list[dict[str, Any]]) -> str:
        data = _jsonl(examples)
        path.write_bytes(data)  # what was sent, for audits and retries
        uploaded = client.files.create(file=(path.name, data, "application/jsonl"), purpose="fine-tune")
        return str(uploaded.id)

    def poll(self, job: TrainingJob) -> JobStatus:
        import openai

        try:
            with self._client(job.details.get("base_url")) as client:
                remote = client.fine_tuning.jobs.retrieve(job.job_id)
                events = list(client.fine_tuning.jobs.list_events(job.job_id, limit=50).data)  # newest first
        except openai.OpenAIError as exc:
            raise TrainerError(f"could not read fine-tuning job {job.job_id}: {exc}") from exc
        return _status(remote, events)

    def cancel(self, job: TrainingJob) -> None:
        import openai

        with self._client(job.details.get("base_url")) as client:
            try:
                client.fine_tuning.jobs.cancel(job.job_id)
            except openai.BadRequestError as exc:  # already finished: nothing to cancel
                if _STATES.get(str(client.fine_tuning.jobs.retrieve(job.job_id).status)) in ("queued", "running"):
                    raise TrainerError(f"could not cancel fine-tuning job {job.job_id}: {exc}") from exc
            except openai.OpenAIError as exc:
                raise TrainerError(f"could not cancel fine-tuning job {job.job_id}: {exc}") from exc


def _status(remote: Any, events: list[Any]) -> JobStatus:
    """A JobStatus from the service's job object and its events (newest first)."""
    state = _STATES.get(str(remote.status))
    if state is None:
        raise TrainerError(f"unknown fine-tuning job status {remote.status!r}")
    metrics = next((dict(e.data) for e in events if getattr(e, "type", None) == "metrics" and e.data), {})
    message = str(events[0].message) if events else str(remote.status)
    step, total = metrics.get("step"), metrics.get("total_steps")
    progress = min(1.0, step / total) if step and total else 0.0
    details = {"status": remote.status, "trained_tokens": remote.trained_tokens,
               "estimated_finish": remote.estimated_finish, **metrics}
    details = {key: value for key, value in details.items() if value is not None}
    if state == "failed":
        error = remote.error
        text = f"{error.code}: {error.message}" if error and error.code else (error.message if error else "")
        return JobStatus("failed", progress, message, error=text or message or "the fine-tuning job failed",
                         details=details)
    if state != "succeeded":
        return JobStatus(state, progress, message, details=details)
    if not remote.fine_tuned_model:
        return JobStatus("failed", progress, message, error="the job succeeded without a fine_tuned_model",
                         details=details)
    result = TrainingResult(artifact=str(remote.fine_tuned_model), model_name=str(remote.fine_tuned_model),
                            base_model=str(remote.model), metrics={
                                "trained_tokens": remote.trained_tokens, "result_files": list(remote.result_files),
                                **{k: v for k, v in metrics.items() if k.endswith("loss") or k.endswith("accuracy")}})
    return JobStatus("succeeded", 1.0, message, result=result, details=details)
