"""Fixtures for the model server tests: a tiny random Llama (built once) served by a real process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import Server, start_model_server, stop

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_NAME = "tiny"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SmolLM2 cache folder of its own, for the test that watches the cache being built (every
    other test shares the session's cache: tests/conftest.py)."""
    return tmp_path_factory.mktemp("model-cache") / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model: Path) -> Path:
    """The session's tiny random Llama folder (built once in tests/conftest.py)."""
    return tiny_model


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path) -> Any:
    """The tiny Llama loaded in this process, for reference computations."""
    from model_server.model_loading import load_model_dir

    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_model_server(tmp_path_factory.mktemp("tiny-server"), "--model", str(tiny_model_dir),
                                "--served-model-name", TINY_NAME, "--max-batch", "8")
    yield server
    stop(server.proc)
