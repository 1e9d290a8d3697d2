"""Trainers: a config dataclass plus a backend implementing `Trainer` (launch → job handle, poll → status).

    trainer = get_trainer("local", {"epochs": 3})        # or "openai", "together", "fireworks"
    job = trainer.launch(dataset_dir, run_dir)            # returns at once
    store(job.to_dict())                                  # plain JSON: poll it after a restart
    status = get_trainer(job.backend, config).poll(TrainingJob.from_dict(saved))

Importing this package imports neither torch nor the openai SDK.
"""

from __future__ import annotations

from typing import Any

from distiller.trainers.base import (
    FINAL_STATES,
    JOB_STATES,
    JobState,
    JobStatus,
    Trainer,
    TrainerError,
    TrainingJob,
    TrainingResult,
)
from distiller.trainers.fireworks import FireworksConfig, FireworksTrainer
from distiller.trainers.local import LocalLoRAConfig, LocalLoRATrainer
from distiller.trainers.openai_ft import OpenAIFineTuningConfig, OpenAIFineTuningTrainer
from distiller.trainers.together import TogetherConfig, TogetherTrainer

__all__ = [
    "BACKENDS", "FINAL_STATES", "JOB_STATES", "FireworksConfig", "FireworksTrainer", "JobState", "JobStatus",
    "LocalLoRAConfig", "LocalLoRATrainer", "OpenAIFineTuningConfig", "OpenAIFineTuningTrainer", "TogetherConfig",
    "TogetherTrainer", "Trainer", "TrainerError", "TrainingJob", "TrainingResult", "get_trainer",
]

BACKENDS: dict[str, tuple[type[Any], type[Any]]] = {
    "local": (LocalLoRAConfig, LocalLoRATrainer),
    "openai": (OpenAIFineTuningConfig, OpenAIFineTuningTrainer),
    "together": (TogetherConfig, TogetherTrainer),
    "fireworks": (FireworksConfig, FireworksTrainer),
}


def get_trainer(name: str, config: Any = None) -> Trainer:
    """The trainer of backend `name` ("local", "openai", "together" or "fireworks"). `config` is that backend's
    config dataclass, a dict of its fields (unknown keys refused), or None for the defaults."""
    try:
        config_cls, trainer_cls = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown trainer backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    if isinstance(config, dict):
        config = config_cls.from_dict(config)
    elif config is not None and not isinstance(config, config_cls):
        raise TypeError(f"the {name!r} trainer takes a {config_cls.__name__}, not {type(config).__name__}")
    trainer: Trainer = trainer_cls(config)
    return trainer
