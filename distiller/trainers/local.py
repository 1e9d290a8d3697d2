"""Local LoRA fine-tuning in a detached subprocess (`python -m distiller.trainers.lora_training`).

The trainer itself never imports torch: `launch` starts the training process in its own session (so it
outlives the distiller and a Ctrl-C aimed at it) and returns a handle holding its pid. The process
reports through files in the run folder, which is what makes polling work from any later process:

    run_dir/status.json   state, progress, step/total, loss, eta; rewritten atomically as it trains
    run_dir/train.log     the process's stdout/stderr (rich progress bar, per-epoch lines, tracebacks)
    run_dir/adapter/      the LoRA adapter (adapter_config.json, adapter_model.safetensors, training.json)
    run_dir/job.json      the handle, as returned by `launch`
    run_dir/cancel        present once `cancel` was asked

A process that dies without writing a final state (killed, out of memory) is reported failed, or
cancelled when a cancel was asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distiller.trainers.base import (
    FINAL_STATES,
    JobStatus,
    TrainerConfig,
    TrainerError,
    TrainingJob,
    TrainingResult,
    dataset_hash,
    helped,
    read_json,
    write_json_atomic,
)

BACKEND = "local"
MODULE = "distiller.trainers.lora_training"
STATUS_FILE = "status.json"
LOG_FILE = "train.log"
ADAPTER_DIR = "adapter"
CANCEL_FILE = "cancel"
TRAINING_FILE = "training.json"
DEVICES = ("auto", "cpu", "cuda", "mps")

# Started by `launch` with `python -c`: it starts the trainer in a new session and exits at once, so the
# trainer is never our child. Nobody has to reap it, and it survives this process.
_SPAWN = (
    "import subprocess, sys\n"
    "with open(sys.argv[1], 'ab') as log:\n"
    "    proc = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,\n"
    "                            start_new_session=True)\n"
    "print(proc.pid)\n"
)



@dataclass(frozen=True, slots=True)
class LocalLoRAConfig(TrainerConfig):
    """LoRA fine-tuning of a local causal LM on the assistant turns of a curated dataset."""

    base_model: str | None = field(default=None, metadata=helped(
        "a local transformers model folder; None: SmolLM2-135M-Instruct (the model server's default)"))
    model_name: str | None = field(default=None, metadata=helped(
        "the adapter's name on the model server (lora_name); None: student-<dataset hash[:8]>-<job id>"))
    r: int = field(default=16, metadata=helped("LoRA rank"))
    alpha: int = field(default=32, metadata=helped("LoRA alpha (the update is scaled by alpha / r)"))
    dropout: float = field(default=0.05, metadata=helped("dropout on the LoRA input"))
    target_modules: tuple[str, ...] = field(default=("q_proj", "v_proj"), metadata=helped(
        "module names that get LoRA weights (Llama-style names; add k_proj, o_proj, *_proj MLPs for capacity)"))
    learning_rate: float = field(default=2e-4, metadata=helped("AdamW peak learning rate"))
    epochs: int = field(default=2, metadata=helped("passes over train.jsonl"))
    batch_size: int = field(default=8, metadata=helped("examples per optimizer step"))
    max_length: int = field(default=512, metadata=helped(
        "tokens per example after the chat template; longer examples are cut at the end"))
    warmup_ratio: float = field(default=0.05, metadata=helped(
        "share of steps with the learning rate rising linearly from 0; it then decays linearly to 0"))
    weight_decay: float = field(default=0.0, metadata=helped("AdamW weight decay"))
    max_grad_norm: float = field(default=1.0, metadata=helped("gradient clipping norm"))
    max_steps: int | None = field(default=None, metadata=helped(
        "stop after this many optimizer steps (smoke tests); None: all epochs"))
    seed: int = field(default=0, metadata=helped(
        "seeds the LoRA init, dropout and shuffling: the same data, config and machine give the same adapter"))
    threads: int | None = field(default=None, metadata=helped("torch CPU threads; None: torch's default"))
    device: str = field(default="auto", metadata=helped(
        "'auto' (cuda, else mps, else cpu), 'cpu', 'cuda' or 'mps'; one device (see the note in lora_training)"))

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):  # from JSON
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        positive = {"r": self.r, "alpha": self.alpha, "epochs": self.epochs, "batch_size": self.batch_size,
                    "max_length": self.max_length, "learning_rate": self.learning_rate}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("dropout and warmup_ratio must be in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be positive or None")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be positive or None")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, not {self.device!r}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data



# ------------------------------------------------------------------------------------------------- status


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """The training process's report (atomic: pollers never read half a file)."""
    write_json_atomic(run_dir / STATUS_FILE, {"state": state, "updated_at": time.time(), **fields})


def process_alive(pid: int) -> bool:
    """Whether `pid` is still our training process: not gone, not a zombie, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():  # no procfs (macOS): the signal check is all there is
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and MODULE.encode() in cmdline


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail)[-500:]


def _status_from_file(data: dict[str, Any], pid: int) -> JobStatus:
    state = data.get("state")
    if state not in ("queued", "running", *FINAL_STATES):
        raise TrainerError(f"unexpected state in {STATUS_FILE}: {state!r}")
    result = TrainingResult.from_dict(data["result"]) if state == "succeeded" and data.get("result") else None
    details = {key: data[key] for key in ("step", "total_steps", "epoch", "epochs", "loss", "val_loss", "eta_s",
                                          "elapsed_s") if data.get(key) is not None}
    details["pid"] = pid
    return JobStatus(state=state, progress=1.0 if state == "succeeded" else float(data.get("progress") or 0.0),
                     message=str(data.get("message") or ""), result=result, error=data.get("error"),
                     details=details)


# ------------------------------------------------------------------------------------------------- trainer


class LocalLoRATrainer:
    """Trains a LoRA adapter with `distiller.trainers.lora_training` in a detached process."""

    backend = BACKEND

    def __init__(self, config: LocalLoRAConfig | None = None, *, python: str | None = None) -> None:
        self.config = config or LocalLoRAConfig()
        self.python = python or sys.executable

    def launch(self, dataset_dir: Path, run_dir: Path) -> TrainingJob:
        dataset_dir, run_dir = Path(dataset_dir).resolve(), Path(run_dir).resolve()
        if not (dataset_dir / "train.jsonl").is_file():
            raise TrainerError(f"{dataset_dir} has no train.jsonl (write it with distiller.dataset.write_dataset)")
        if self.config.base_model is not None and not (Path(self.config.base_model) / "config.json").is_file():
            raise TrainerError(f"base model {self.config.base_model} is not a transformers model folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / STATUS_FILE).exists():
            raise TrainerError(f"{run_dir} already holds a training run; use a fresh run folder")
        job_id = f"lora-{uuid.uuid4().hex[:12]}"
        digest = dataset_hash(dataset_dir)
        model_name = self.config.model_name or f"student-{(digest or 'nohash')[:8]}-{job_id[5:11]}"
        config = dataclasses.replace(self.config, model_name=model_name)
        write_status(run_dir, "queued", progress=0.0, message="starting the training process")
        cmd = [self.python, "-m", MODULE, "--dataset", str(dataset_dir), "--run-dir", str(run_dir),
               "--config", json.dumps(config.to_dict())]
        pid = self._spawn(cmd, run_dir)
        job = TrainingJob(backend=BACKEND, job_id=job_id, run_dir=str(run_dir), details={
            "pid": pid, "dataset_dir": str(dataset_dir), "dataset_hash": digest, "model_name": model_name,
            "adapter_dir": str(run_dir / ADAPTER_DIR), "log": str(run_dir / LOG_FILE), "config": config.to_dict()})
        job.save()
        return job

    def _spawn(self, cmd: list[str], run_dir: Path) -> int:
        root = str(Path(__file__).resolve().parents[2])  # importable even without an installed package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
               "PYTHONUNBUFFERED": "1"}
        try:
            out = subprocess.run([self.python, "-W", "ignore::ResourceWarning", "-c", _SPAWN,
                                  str(run_dir / LOG_FILE), *cmd],
                                 capture_output=True, text=True, check=True, timeout=60, env=env, cwd=run_dir)
            return int(out.stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            write_status(run_dir, "failed", error=f"could not start the training process: {exc}")
            raise TrainerError(f"could not start the training process: {exc}") from exc

    def poll(self, job: TrainingJob) -> JobStatus:
        run_dir = Path(job.run_dir)
        pid = int(job.details["pid"])
        data = read_json(run_dir / STATUS_FILE)
        if data is not None and data.get("state") in FINAL_STATES:
            return _status_from_file(data, pid)
        if process_alive(pid):
            if data is None:
                return JobStatus(state="queued", message="waiting for the training process")
            return _status_from_file(data, pid)
        # gone: it may have written its final state between our read and the check
        data = read_json(run_dir / STATUS_FILE)
        if data is not None and data.get("state") in FINAL_STATES:
            return _status_from_file(data, pid)
        progress = float(data.get("progress") or 0.0) if data else 0.0
        if (run_dir / CANCEL_FILE).exists():
            return JobStatus(state="cancelled", progress=progress, message="cancelled")
        tail = _log_tail(run_dir / LOG_FILE)
        error = f"the training process (pid {pid}) exited without a final status" + (f"; log: {tail}" if tail else "")
        return JobStatus(state="failed", progress=progress, message=error, error=error)

    def cancel(self, job: TrainingJob) -> None:
        """SIGTERM to the training process's group: it writes "cancelled" and exits between two steps."""
        run_dir = Path(job.run_dir)
        (run_dir / CANCEL_FILE).write_text(f"{time.time()}\n")
        pid = int(job.details["pid"])
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # start_new_session made the pid its group id
