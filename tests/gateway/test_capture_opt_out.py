"""Sensitive traffic stays out of the store: per request (X-Protege-Capture: off) and per task."""

from __future__ import annotations

from pathlib import Path

from tests.inprocess import inprocess_gateway, settings_for
from tests.servers import Server


def test_capture_off_per_request_and_per_task(katan: Server, tmp_path: Path) -> None:
    settings = settings_for(katan, tmp_path / "store.db", config={"capture": {"skip_tasks": ["medical"]}})
    with inprocess_gateway(settings) as gateway:
        client = gateway.openai()

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
        assert [row.task for row in gateway.rows()] == ["kept", "kept2"]
        # the opted-out requests still count in the metrics (no content there)
        assert gateway.metric("protege_requests_total", route="teacher", status="ok", task="private") == 1


def test_an_unknown_capture_header_value_is_a_clear_400(katan: Server, tmp_path: Path) -> None:
    with inprocess_gateway(settings_for(katan, tmp_path / "store.db")) as gateway:
        response = gateway.client.post("/v1/chat/completions", headers={"X-Protege-Capture": "maybe"},
                                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "X-Protege-Capture" and error["type"] == "invalid_request_error"
