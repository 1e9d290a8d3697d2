"""The gateway stays light: importing every gateway module (and building the app) pulls in neither
torch nor anything of the distiller."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gateway_imports_neither_torch_nor_the_distiller() -> None:
    code = """
import importlib, pkgutil, sys
import gateway
for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
    importlib.import_module(module.name)
from gateway.app import create_app
from gateway.config import Settings
create_app(Settings())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "peft", "distiller"})
print(",".join(heavy))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the gateway imported {done.stdout.strip()}"
