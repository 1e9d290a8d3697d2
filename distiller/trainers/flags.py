"""The trainer flags of `protege distill` (and the scheduler), derived from each backend's config dataclass.

One flag per config field (`learning_rate` → `--learning-rate`), its help the field's own help text and
default, grouped by backend; a field two backends share (`--epochs`, `--batch-size`, `--seed`) is one flag.
After parsing, `trainer_config` keeps the values of the chosen backend and refuses a flag that only another
backend takes, so `--trainer openai --r 8` is a clear error rather than a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

# set by the pipeline, not by a flag: the base model (--base-model) and the name the version is served under
SKIPPED = frozenset({"base_model", "model_name"})
PREFIX = "trainer_option__"


class TrainerFlagError(ValueError):
    """A trainer flag that the chosen backend does not take, or a value its config refuses."""


def _parser(annotation: object) -> Callable[[str], Any]:
    """How a flag's text becomes the field's value, from its annotation (a string under `from __future__`)."""
    text = str(annotation).replace(" ", "")
    if text.startswith("tuple[str"):
        return lambda value: tuple(part.strip() for part in value.split(",") if part.strip())
    for name, parse in (("int", int), ("float", float)):
        if text in (name, f"{name}|None"):
            return parse
    return str


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_trainer_flags(parser: argparse.ArgumentParser, backends: Mapping[str, tuple[type[Any], type[Any]]]) -> None:
    seen: dict[str, list[str]] = {}
    fields = {backend: [f for f in dataclasses.fields(config) if f.name not in SKIPPED]
              for backend, (config, _) in backends.items()}
    for backend, items in fields.items():
        for f in items:
            seen.setdefault(f.name, []).append(backend)
    for backend, items in fields.items():
        group = parser.add_argument_group(f"--trainer {backend}", f"options of the {backend} trainer "
                                          f"({backends[backend][0].__name__})")
        for f in items:
            if seen[f.name][0] != backend:
                continue  # shared: added with the first backend that has it
            shared = seen[f.name][1:]
            default = f.default if f.default is not dataclasses.MISSING else None
            help_text = f"{f.metadata.get('help', '')} (default {default})"
            if shared:
                help_text += f"; also --trainer {', '.join(shared)}"
            metavar = "A,B" if str(f.type).startswith("tuple") else f.name.upper().split("_")[-1]
            group.add_argument(_flag(f.name), dest=PREFIX + f.name, type=_parser(f.type), default=None,
                               metavar=metavar, help=help_text.replace("%", "%%"))


def trainer_config(args: argparse.Namespace, backend: str,
                   backends: Mapping[str, tuple[type[Any], type[Any]]]) -> dict[str, Any]:
    """The chosen backend's options that were given; a flag of another backend only is an error."""
    config_cls = backends[backend][0]
    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {key.removeprefix(PREFIX): value for key, value in vars(args).items()
             if key.startswith(PREFIX) and value is not None}
    foreign = sorted(_flag(name) for name in given if name not in names)
    if foreign:
        takes = ", ".join(sorted(_flag(n) for n in names - SKIPPED))
        raise TrainerFlagError(f"{', '.join(foreign)}: not an option of --trainer {backend} (it takes {takes})")
    try:
        config_cls(**given)  # its own checks (positive epochs, known device…) as a usage error
    except (TypeError, ValueError) as exc:
        raise TrainerFlagError(f"--trainer {backend}: {exc}") from exc
    return given
