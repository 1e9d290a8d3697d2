"""The pre-generation predictor in the cascade: a request the version's predictor expects the student to fail
goes straight to the teacher — the student server never sees it — and the others are asked as before; a
predictor the distiller left off, or the gateway's `cascade.predictor: false`, changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.chat.predictor import FEATURES, AcceptancePredictor, request_features
from gateway.store import Store, StudentDetails, StudentVersion
from tests.gateway.test_cascade import TASK, cascade_settings
from tests.inprocess import InProcessGateway, inprocess_gateway
from tests.openai_upstream import ScriptedUpstream
from tests.stores import read_store

# a hand-set model: unseen words and non-ASCII text make a request one the student fails
PREDICTOR = AcceptancePredictor(frozenset({"where", "is", "my", "order", "parcel"}), (0.0,) * 6, (1.0,) * 6,
                                (0.0, -20.0, 0.0, 0.0, -10.0, 0.0), 5.0, 0.5, True)
USUAL = "Where is my parcel?"
UNUSUAL = "Wo ist meine Bestellung? Sie ist überfällig."


def test_features_of_a_request() -> None:
    messages = [{"role": "system", "content": "ignored ÄÖÜ"}, {"role": "user", "content": "Where is ORDER 42?"}]
    length, non_ascii, digits, capitals, unseen, turns = request_features(messages, frozenset({"where", "is"}))
    assert (non_ascii, turns) == (0.0, 1.0) and digits == pytest.approx(2 / 18)
    assert capitals == pytest.approx(6 / 12) and unseen == pytest.approx(2 / 4) and length > 2
    assert len(FEATURES) == 6


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Any]:
    with ScriptedUpstream(chat_content="The teacher's answer.") as teacher, \
            ScriptedUpstream(chat_content="The student's answer.") as student:
        opened: list[Any] = []

        def make(record: dict[str, Any] | None, **cascade: Any) -> tuple[InProcessGateway, ScriptedUpstream]:
            store = tmp_path / f"store-{len(opened)}.db"

            async def register(db: Store) -> None:
                now = time.time()
                await db.add_student(StudentVersion(task=TASK, version=1, status="candidate", model="tiny",
                                                    created_at=now, updated_at=now, threshold=-1000.0,
                                                    details=StudentDetails(predictor=record)))
                await db.set_student_status(TASK, 1, "active")
                await db.set_rollout(TASK, 100)

            read_store(store, register)
            context = inprocess_gateway(cascade_settings(teacher, student, store, **cascade))
            opened.append(context)
            return context.__enter__(), student

        yield make
        for context in opened:
            context.__exit__(None, None, None)


def route(gateway: InProcessGateway, content: str) -> str:
    response = gateway.client.post("/v1/chat/completions", headers={"X-Protege-Task": TASK}, json={
        "model": "gpt-4o-mini", "user": "u", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text
    return response.headers["x-protege-route"]


def student_calls(student: ScriptedUpstream) -> int:
    return sum(r.path.startswith("/v1/chat/completions") for r in student.received)


def test_a_request_the_student_would_fail_skips_it(gateway: Any) -> None:
    app, student = gateway(PREDICTOR.to_json())
    assert route(app, UNUSUAL) == "teacher" and student_calls(student) == 0
    assert route(app, USUAL) == "student" and student_calls(student) == 1
    assert app.metric("protege_student_predicted_skips_total", task=TASK) == 1
    assert [r.route for r in app.rows()] == ["teacher", "student"]  # the skipped one is captured as training data


@pytest.mark.parametrize("setup", ["left off by the distiller", "turned off in the gateway", "unreadable"])
def test_otherwise_the_student_is_asked(gateway: Any, setup: str) -> None:
    predictor, cascade = PREDICTOR.to_json(), {}
    if setup == "left off by the distiller":
        predictor["enabled"] = False
    elif setup == "turned off in the gateway":
        cascade = {"predictor": False}
    else:
        predictor["weights"] = "garbled"
    app, student = gateway(predictor, **cascade)
    assert route(app, UNUSUAL) == "student" and student_calls(student) == 1
