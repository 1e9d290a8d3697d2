"""Real server processes for tests: llm-katan (an independent OpenAI/Anthropic-compatible server)
and the Protégé gateway itself, each on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


# /metrics needs the admin token: a gateway started without one gets this, so tests can read its metrics
TEST_ADMIN_TOKEN = "test-admin-token-0123456789"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    admin_token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_katan(log_dir: Path, *extra: str, port: int | None = None) -> Server:
    port = port or free_port()
    log = log_dir / f"katan-{port}.log"
    cmd = [str(BIN / "llm-katan"), "--model", "echo-model", "--backend", "echo", "--providers",
           "openai,anthropic", "--port", str(port), "--disable-dashboard", "--log-level", "warning",
           "--device", "cpu", *extra]  # `auto` imports torch to look for a GPU: 4-5 s a start for an echo server
    env = {**os.environ, "HOME": str(log_dir)}  # katan keeps stats under ~/.llm-katan
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return Server(proc, port, log)


def start_gateway(log_dir: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> Server:
    """`protege serve` with these flags. Without --admin-token (or PROTEGE_ADMIN_TOKEN in `env`, which may be
    empty to start one without), it gets TEST_ADMIN_TOKEN."""
    port = port or free_port()
    log = log_dir / f"gateway-{port}.log"
    if "--admin-token" in args:
        admin_token: str | None = args[args.index("--admin-token") + 1]
    elif env is not None and "PROTEGE_ADMIN_TOKEN" in env:
        admin_token = env["PROTEGE_ADMIN_TOKEN"] or None
    else:
        admin_token, args = TEST_ADMIN_TOKEN, (*args, "--admin-token", TEST_ADMIN_TOKEN)
    cmd = [sys.executable, "-m", "protege", "serve", "--port", str(port), "--log-level", "warning", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"gateway failed to start:\n{log.read_text(errors='replace')}") from None
    return Server(proc, port, log, admin_token)


def start_model_server(log_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Server:
    """`python -m model_server.server` (the embedded model server) on a free port."""
    port = free_port()
    log = log_dir / f"model-server-{port}.log"
    cmd = [sys.executable, "-m", "model_server.server", "--port", str(port), "--log-level", "warning",
           "--threads", "1", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **(env or {})})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=timeout)
    except Exception:
        stop(proc)
        raise RuntimeError(f"model server failed to start:\n{log.read_text(errors='replace')}") from None
    return Server(proc, port, log)


def start_fake_service(module: str, log_dir: Path, *args: str, what: str) -> Server:
    """`python -m <module> --port <free> <args>`: one of the tests' fakes of a hosted service, on 127.0.0.1,
    once its /healthz answers."""
    port = free_port()
    log = log_dir / f"{module.rsplit('.', 1)[-1]}-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=30)
    except Exception:
        stop(proc)
        raise RuntimeError(f"{what} failed to start:\n{log.read_text(errors='replace')}") from None
    return Server(proc, port, log)


def metric(server: Server, name: str, **labels: str) -> float:
    """The sum of a metric's samples on a server's /metrics whose labels include `labels`."""
    headers = {"authorization": f"Bearer {server.admin_token}"} if server.admin_token else {}
    response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    text = response.text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))
