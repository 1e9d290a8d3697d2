"""The embedded model server: a child process `protege serve` starts when no teacher is configured.

The gateway never imports torch; it runs `python -m model_server.server` and talks HTTP to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import SecretStr

from gateway.config import EmbeddedConfig, TeacherConfig

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if the gateway dies without cleaning up (e.g. SIGKILL)
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedModelServer:
    """The model server as a child process on 127.0.0.1, with a random API key of its own: other local
    users cannot load adapters into it or use it. The key reaches the child in a 0600 file (never on its
    command line or in its environment) and the gateway sends it as a bearer token."""

    def __init__(self, config: EmbeddedConfig, host: str = "127.0.0.1") -> None:
        self.config = config
        self.host = host
        self.port = config.port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        self.api_key = secrets.token_urlsafe(32)
        self._key_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _key_file(self) -> Path:
        if self._key_dir is None:
            self._key_dir = tempfile.TemporaryDirectory(prefix="protege-model-server-")  # 0700
        path = Path(self._key_dir.name) / "api-key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self.api_key)
        return path

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "model_server.server", "--host", self.host, "--port", str(self.port),
               "--served-model-name", EMBEDDED_MODEL_NAME, "--api-key-file", str(self._key_file())]
        if self.config.model:
            cmd += ["--model", self.config.model]
        if self.config.threads:
            cmd += ["--threads", str(self.config.threads)]
        return cmd

    def start(self) -> None:
        # its output goes to our stderr: stdout may be a command's machine-readable answer
        self.process = subprocess.Popen(self.command(), stdout=sys.stderr, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded model server exited with code {self.process.returncode}")
            try:
                if httpx.get(f"http://{self.host}:{self.port}/healthz", timeout=1).status_code == 200:
                    self._forget_key_file()  # read at start-up: it need not stay on disk
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"embedded model server not ready after {self.config.startup_timeout_s:.0f} s")

    def _forget_key_file(self) -> None:
        if self._key_dir is not None:
            self._key_dir.cleanup()
            self._key_dir = None

    def stop(self) -> None:
        self._forget_key_file()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def teacher(self) -> TeacherConfig:
        per_million = f"{self.config.input_cost_per_token * 1e6:g} / {self.config.output_cost_per_token * 1e6:g}"
        return TeacherConfig(model=f"openai/{EMBEDDED_MODEL_NAME}", api_base=self.api_base,
                             api_key=SecretStr(self.api_key),
                             input_cost_per_token=self.config.input_cost_per_token,
                             output_cost_per_token=self.config.output_cost_per_token,
                             price_note=f"{EMBEDDED_MODEL_NAME} runs on this machine: its price ({per_million} USD "
                             "per million input / output tokens) is for simulation, not a bill")
