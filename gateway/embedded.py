"""The embedded model server: a child process `protege serve` starts when no teacher is configured.

The gateway never imports torch; it runs `python -m distiller.local.server` and talks HTTP to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time

import httpx

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
    def __init__(self, config: EmbeddedConfig, host: str = "127.0.0.1") -> None:
        self.config = config
        self.host = host
        self.port = config.port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "distiller.local.server", "--host", self.host, "--port", str(self.port),
               "--served-model-name", EMBEDDED_MODEL_NAME]
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
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"embedded model server not ready after {self.config.startup_timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def teacher(self) -> TeacherConfig:
        return TeacherConfig(model=f"openai/{EMBEDDED_MODEL_NAME}", api_base=self.api_base,
                             input_cost_per_token=self.config.input_cost_per_token,
                             output_cost_per_token=self.config.output_cost_per_token)
