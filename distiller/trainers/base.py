"""The trainer interface: `launch` a fine-tuning job, `poll` it, `cancel` it; no torch here.

Training takes minutes to hours and outlives the process that started it (the distiller may be
restarted, the hosted service keeps running), so a job is a plain, JSON-serialisable handle
(`TrainingJob`) that any later `Trainer` of the same backend can poll. A backend is a config
dataclass (each field with help text, see `config_help`) plus a class implementing `Trainer`.

States follow the hosted fine-tuning APIs, reduced to five: queued (accepted, not yet training),
running, and the final ones succeeded, failed, cancelled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Self, TypeVar, get_args, runtime_checkable

from gateway.errors import ProtegeError

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
FINAL_STATES: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})
JOB_FILE = "job.json"


class TrainerError(ProtegeError):
    """A job could not be launched, polled or cancelled (bad dataset, missing credentials, service error).

    A job that ran and failed is not an exception: `poll` reports it as a `JobStatus` in state "failed"."""


@dataclass(frozen=True, slots=True)
class TrainingResult:
    """What a succeeded job produced."""

    artifact: str
    """The adapter folder (local LoRA) or the hosted model id (`ft:...`)."""
    model_name: str
    """The name to serve it under: the model server's `lora_name`, or the hosted model id."""
    base_model: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingResult:
        return cls(artifact=str(data["artifact"]), model_name=str(data["model_name"]),
                   base_model=str(data["base_model"]), metrics=dict(data.get("metrics") or {}))


@dataclass(frozen=True, slots=True)
class JobStatus:
    """One observation of a job. `result` is set only when succeeded, `error` only when failed."""

    state: JobState
    progress: float = 0.0
    """0-1: optimizer steps done / planned (1.0 once succeeded)."""
    message: str = ""
    result: TrainingResult | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Backend-specific numbers for display (step, total_steps, loss, eta_s, the service's status...)."""

    def __post_init__(self) -> None:
        if self.state not in JOB_STATES:
            raise ValueError(f"state must be one of {JOB_STATES}, not {self.state!r}")

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["result"] = self.result.to_dict() if self.result else None
        return data


@dataclass(frozen=True, slots=True)
class TrainingJob:
    """The handle of a launched job: enough to poll or cancel it from another process, later.

    Store `to_dict()` (plain JSON) with the student version being trained; rebuild with `from_dict`."""

    backend: str
    job_id: str
    run_dir: str
    created_at: float = field(default_factory=time.time)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingJob:
        return cls(backend=str(data["backend"]), job_id=str(data["job_id"]), run_dir=str(data["run_dir"]),
                   created_at=float(data["created_at"]), details=dict(data.get("details") or {}))

    def save(self) -> Path:
        """Write the handle to `run_dir/job.json` too, so a run folder alone is enough to find its job."""
        path = Path(self.run_dir) / JOB_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainingJob:
        return cls.from_dict(json.loads((Path(run_dir) / JOB_FILE).read_text()))


@runtime_checkable
class Trainer(Protocol):
    """A training backend. Calls are synchronous and quick (async callers use `asyncio.to_thread`)."""

    backend: str

    def launch(self, dataset_dir: Path, run_dir: Path) -> TrainingJob:
        """Start training on a curated dataset folder (`distiller.dataset.write_dataset`); returns at once.
        `run_dir` (created if missing) receives logs and, for local training, the adapter."""
        ...

    def poll(self, job: TrainingJob) -> JobStatus:
        """The job's current status; safe to call from any process, any number of times."""
        ...

    def cancel(self, job: TrainingJob) -> None:
        """Ask the job to stop; `poll` reports "cancelled" once it has."""
        ...


# ------------------------------------------------------------------------------------------------- helpers

C = TypeVar("C")


def helped(text: str) -> dict[str, str]:
    """A config field's metadata: its help text, which becomes the help of its CLI flag (`config_help`)."""
    return {"help": text}


class TrainerConfig:
    """What every backend's config dataclass shares: a plain-JSON round trip that refuses unknown keys, and the
    help text of its fields."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return config_from_dict(cls, data)

    @classmethod
    def help(cls) -> dict[str, str]:
        return config_help(cls)

    def require_positive(self, *names: str) -> None:
        """Each named option, when set, must be above 0 (None: the service's or the trainer's default)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None")


def config_help(config_cls: type[Any]) -> dict[str, str]:
    """Each config field's help text (the `help` entry of its metadata), for CLI flags and docs."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(config_cls)}


def config_from_dict(config_cls: type[C], data: dict[str, Any]) -> C:
    """Build a config dataclass from JSON-like data, refusing unknown keys (a typo must not pass silently)."""
    names = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} options: {sorted(unknown)}")
    return config_cls(**data)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write next to `path` and rename over it: a reader in another process sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def examples_without_metadata(path: Path) -> list[dict[str, Any]]:
    """The lines of a dataset split as pure chat fine-tuning examples: the curation `metadata` removed."""
    if not path.is_file():
        return []
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise TrainerError(f"{path}:{number} is not JSON: {exc}") from exc
        if not isinstance(record, dict):
            raise TrainerError(f"{path}:{number} is not a JSON object")
        record.pop("metadata", None)
        examples.append(record)
    return examples


def dataset_hash(dataset_dir: Path) -> str | None:
    """The dataset hash from `manifest.json` (None for a folder written by hand without one)."""
    manifest = read_json(dataset_dir / "manifest.json")
    value = manifest.get("dataset_hash") if manifest else None
    return str(value) if value else None
