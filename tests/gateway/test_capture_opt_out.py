"""Sensitive traffic stays out of the store: per request (X-Protege-Capture: off) and per task."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai

from tests.conftest import teacher_flags
from tests.servers import Server


def captured_tasks(store: Path) -> list[str]:
    time.sleep(0.4)  # capture flush interval
    with sqlite3.connect(store) as db:
        return [r[0] for r in db.execute("SELECT task FROM exchanges ORDER BY created_at")]


def test_capture_off_per_request_and_per_task(katan: Server, gateway_factory: Callable[..., Server],
                                              tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    config = tmp_path / "protege.yaml"
    config.write_text("capture:\n  skip_tasks: [medical]\n")
    gateway = gateway_factory("--config", str(config), *teacher_flags(katan, store))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)

    def ask(task: str, **headers: str) -> str:
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"secret {task}"}],
            extra_headers={"X-Protege-Task": task, **headers})
        return answer.choices[0].message.content or ""

    assert "secret kept" in ask("kept")
    assert "secret private" in ask("private", **{"X-Protege-Capture": "off"})  # answered, not stored
    assert "secret medical" in ask("medical")  # a skipped task
    assert ask("kept2", **{"X-Protege-Capture": "on"})
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}],
                                            stream=True, extra_headers={"X-Protege-Task": "streamed",
                                                                        "X-Protege-Capture": "OFF"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert captured_tasks(store) == ["kept", "kept2"]
    # the opted-out requests still count in the metrics (no content there)
    assert 'protege_requests_total{route="teacher",status="ok",task="private"} 1.0' in httpx.get(
        f"{gateway.url}/metrics").text


def test_an_unknown_capture_header_value_is_a_clear_400(katan: Server, gateway_factory: Callable[..., Server],
                                                        tmp_path: Path) -> None:
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "store.db"))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"X-Protege-Capture": "maybe"},
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "X-Protege-Capture" and error["type"] == "invalid_request_error"
