from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.pg import fresh_schema
from tests.servers import Server, start_gateway, start_katan, start_model_server, stop

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One compute thread per process, for this process and every server it starts: the suite runs on two
# xdist workers on two cores, and torch's or the tokenizer's extra threads only wait on each other's
# time slices there (measured: twice the CPU time for the same tests).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One dequantised SmolLM2 for the whole run, shared by both xdist workers ($PROTEGE_MODEL_CACHE, kept out
    of ~/.cache): the first process that loads the model builds it (atomically), every later one reuses it."""
    from model_server.names import CACHE_ENV, DEFAULT_SERVED_NAME

    if os.environ.get(CACHE_ENV):
        yield Path(os.environ[CACHE_ENV])
        return
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, above gw0/gw1
    path = shared / "smollm2-cache" / DEFAULT_SERVED_NAME
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def katan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A healthy llm-katan echo server shared by the session."""
    server = start_katan(tmp_path_factory.mktemp("katan"))
    yield server
    stop(server.proc)


@contextmanager
def stopped_after(start: Callable[..., Server]) -> Iterator[Callable[..., Server]]:
    """`start`, remembering each server it starts, and every one of them stopped at the end."""
    started: list[Server] = []

    def make(*args: Any, **kwargs: Any) -> Server:
        started.append(start(*args, **kwargs))
        return started[-1]

    yield make
    for server in started:
        stop(server.proc)


@pytest.fixture
def katan_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """llm-katan with failure-injection flags (and a port, when given), stopped after the test."""
    with stopped_after(lambda *flags, port=None: start_katan(tmp_path, *flags, port=port)) as make:
        yield make


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Starts `protege serve` processes with the given flags (and `env=`); stops them after the test."""
    with stopped_after(lambda *args, env=None: start_gateway(tmp_path, *args, env=env)) as make:
        yield make


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store of each backend: a new SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        with fresh_schema() as url:
            yield url


def teacher_flags(upstream: Server, store: Path, model: str = "openai/gpt-4o-mini") -> list[str]:
    return ["--store", f"sqlite:///{store}", "--teacher", model, "--teacher-api-base", f"{upstream.url}/v1",
            "--teacher-api-key", "sk-upstream-secret-123456"]


@pytest.fixture(scope="session")
def tiny_student(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One model server with the tiny random Llama (served as "tiny") for every test that needs a student
    server and does not change what it serves for good (tests that load an adapter unload it again)."""
    server = start_model_server(tmp_path_factory.mktemp("tiny-student"), "--model", str(tiny_model),
                                "--served-model-name", "tiny", "--threads", "1")
    yield server
    stop(server.proc)


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    from model_server.model_loading import load_smollm2_tokenizer

    return load_smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """A tiny random Llama folder with the real SmolLM2 tokenizer (fast stand-in for the real model)."""
    from model_server.model_loading import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0, tokenizer=smollm2_tokenizer)
