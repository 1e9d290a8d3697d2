"""The layout's import rules, and the gateway running on its own.

Three processes, three packages: `gateway` (the proxy, its commands and its store), `distiller` (curation,
training, evaluation) and `model_server` (the local base model with LoRA adapters), composed into one command
by `protege`. The gateway is shipped alone in the slim image, so it must never import the other two; torch and
its family belong to the model server and the trainer only."""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from gateway.store import open_store
from tests.conftest import teacher_flags
from tests.servers import REPO, Server, start_gateway, stop

PACKAGES = ("gateway", "distiller", "model_server", "protege")
HEAVY = {"torch", "transformers", "peft", "accelerate", "safetensors"}
TRAINER = "distiller/trainers/"  # the trainer process's modules (training, merging) may import torch

# what each package may import of the others (statically: `protege` loads the optional ones by name)
ALLOWED = {
    "gateway": set(),
    "model_server": {"gateway"},  # the OpenAI error renderer, auth and body helpers
    "distiller": {"gateway", "model_server"},  # the trainer loads models the way the model server does
    "protege": {"gateway"},
}


def imports_of(path: Path) -> Iterator[str]:
    """Every module a file imports, at any depth (lazy imports in functions count as well)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def sources() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path


def test_each_package_imports_only_what_the_layout_allows() -> None:
    broken = []
    for package, path in sources():
        for module in imports_of(path):
            top = module.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                broken.append(f"{path.relative_to(REPO)} imports {module}")
    assert not broken, "\n".join(broken)


def test_only_the_model_server_and_the_trainer_import_torch() -> None:
    heavy = []
    for package, path in sources():
        relative = path.relative_to(REPO).as_posix()
        if package == "model_server" or relative.startswith(TRAINER):
            continue
        heavy += [f"{relative} imports {m}" for m in imports_of(path) if m.split(".")[0] in HEAVY]
    assert not heavy, "\n".join(heavy)


def test_the_rules_catch_a_forbidden_import(tmp_path: Path) -> None:
    """The AST walk sees an import inside a function, the way the code hides heavy ones."""
    module = tmp_path / "lazy.py"
    module.write_text("def load():\n    from distiller.trainers import merge\n    import torch.nn\n")
    assert set(imports_of(module)) == {"distiller.trainers", "torch.nn"}


BLOCKER = '''
import importlib.abc, sys

class Uninstalled(importlib.abc.MetaPathFinder):
    """As if only the gateway were installed (the slim image): the other packages cannot be found."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("distiller", "model_server", "torch"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
        return None

sys.meta_path.insert(0, Uninstalled())
'''


@pytest.fixture
def gateway_only(tmp_path: Path) -> dict[str, str]:
    """The environment of a Python where the distiller, the model server and torch are not installed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_the_protege_command_without_the_distiller_has_the_gateway_commands(gateway_only: dict[str, str]) -> None:
    shown = subprocess.run([sys.executable, "-m", "protege", "--help"], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, **gateway_only}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    for command in ("serve", "keys", "tasks", "export", "forget", "prune", "migrate-store", "rollout"):
        assert command in shown.stdout
    for command in ("distill", "scheduler", "model-server", "demo"):
        assert command not in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "protege", "distill", "--task", "t"], capture_output=True,
                             text=True, cwd=REPO, env={**os.environ, **gateway_only}, timeout=60)
    assert refused.returncode == 2 and "invalid choice: 'distill'" in refused.stderr


def test_the_gateway_serves_and_captures_without_the_distiller(katan: Server, tmp_path: Path,
                                                              gateway_only: dict[str, str]) -> None:
    store = tmp_path / "store.db"
    gateway = start_gateway(tmp_path, *teacher_flags(katan, store), env=gateway_only)
    try:
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                extra_headers={"x-protege-task": "alone"})
        assert answer.choices[0].message.content
    finally:
        assert stop(gateway.proc) == 0, gateway.output()
    assert "distiller" not in gateway.output() and "Traceback" not in gateway.output()

    async def captured() -> list[str]:
        the_store = open_store(f"sqlite:///{store}")
        await the_store.open()
        try:
            return [e.task for e in await the_store.list_exchanges(task="alone")]
        finally:
            await the_store.close()

    assert asyncio.run(captured()) == ["alone"]  # SIGTERM drains the capture writer


DIALECTS = ("openai", "responses", "anthropic", "passthrough", "admin", "console", "health")
SHARED_RENDERER = "gateway.openai.errors"  # OpenAI's error shape: the admin API and health answer in it too


def test_the_dialects_never_import_each_other() -> None:
    crossing = []
    for dialect in DIALECTS:
        for path in sorted((REPO / "gateway" / dialect).rglob("*.py")):
            for module in imports_of(path):
                parts = module.split(".")
                if (len(parts) > 1 and parts[0] == "gateway" and parts[1] in DIALECTS and parts[1] != dialect
                        and module != SHARED_RENDERER):
                    crossing.append(f"{path.relative_to(REPO)} imports {module}")
    assert not crossing, "\n".join(crossing)
