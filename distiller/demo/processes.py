"""The demo's child processes (model server, gateway): started with their own log, stopped in `finally`, and
given SIGTERM by the kernel should the demo die without cleaning up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

REPO = Path(__file__).resolve().parents[2]


class DemoError(RuntimeError):
    """The demo could not run; the message says why (and where the logs are)."""


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if the demo dies without cleaning up (e.g. SIGKILL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(slots=True)
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    _out: IO[bytes] | None = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out is not None:
            self._out.close()


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    # the run's config file is the whole configuration: PROTEGE_* settings of the caller's shell would
    # override it (environment beats YAML), so they are left out; provider keys pass through
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return {**env, **extra}


def start_child(name: str, cmd: Sequence[str], log: Path, health_url: str, timeout_s: float,
                env: dict[str, str] | None = None) -> Child:
    out = log.open("ab")
    proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=_child_env(env or {}), cwd=REPO, preexec_fn=_die_with_parent)
    child = Child(name, proc, log, out)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            child.stop()
            raise DemoError(f"the {name} exited with code {proc.returncode}; log {log}:\n{child.tail()}")
        try:
            if httpx.get(health_url, timeout=1).status_code == 200:
                return child
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    child.stop()
    raise DemoError(f"the {name} did not answer {health_url} within {timeout_s:.0f} s; log {log}:\n{child.tail()}")
