"""The console as a place to decide (/admin/ui/tasks/<task>/examples), in headless Chromium against a real
gateway process: a version's held-out answers beside the teacher's with their scores, the live shadow
comparisons (the student's answer from its own row), the fallbacks with the reason and the rejected answer;
each narrowed to its disagreements and exported as JSONL. The store holds what the distiller and the gateway
write. Screenshots go to tests/artifacts/console/."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from distiller.evaluate import EvaluationReport, ExampleResult, ModelReport, ScoreSummary
from gateway.store import Exchange, ExchangeExtra, ShadowNote, StudentDetails, StudentNote, StudentVersion, open_store
from tests.gateway.test_console import audit, browser, login, navigating, screenshot, text_of  # noqa: F401 (fixture)
from tests.servers import Server, start_gateway, stop

ADMIN = "console-examples-admin-token"
TASK = "tickets"
HELD_OUT = [("Where is order 1?", '{"city": "Oslo"}', '{"city": "Oslo"}', 1.0),
            ("Ticket about order 2", '{"city": "Lima"}', '{"city": "Lima"}', 1.0),
            ("Hola, mi pedido", '{"city": "Madrid"}', '{"city": null}', 0.0)]


def row(request_id: str, route: str, user: str, answer: str, extra: ExchangeExtra, at: float) -> Exchange:
    return Exchange(request_id=request_id, created_at=at, task=TASK, task_source="header", route=route,
                    model="gpt-4o-mini", upstream_model="gpt-4o-mini", status="ok", http_status=200, stream=False,
                    request={"messages": [{"role": "user", "content": user}]},
                    response={"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": answer}}]},
                    prompt_tokens=20, completion_tokens=6, cost_usd=1e-5, finish_reason="stop", extra=extra)


def seed(store: Path) -> None:
    evaluation = EvaluationReport(split="test", student=ModelReport("student", ScoreSummary(0.667, 0.0, 1.0, 3)),
                                  examples=[ExampleResult(f"req_h{i}", q, t, s, score)
                                            for i, (q, t, s, score) in enumerate(HELD_OUT)])
    now = time.time()
    rows = [
        # a served student answer, shadowed: the teacher agreed
        row("req_s1", "student", "Order 7 to Rome?", '{"city": "Rome"}',
            ExchangeExtra(student=StudentNote(version=1, confidence=-0.1)), now - 50),
        row("req_s1-shadow", "shadow", "Order 7 to Rome?", '{"city": "Rome"}',
            ExchangeExtra(shadow=ShadowNote(1, 1.0)), now - 49),
        # another, where the teacher disagreed
        row("req_s2", "student", "Parcel for Bergen", '{"city": "Oslo"}',
            ExchangeExtra(student=StudentNote(version=1, confidence=-0.2)), now - 40),
        row("req_s2-shadow", "shadow", "Parcel for Bergen", '{"city": "Bergen"}',
            ExchangeExtra(shadow=ShadowNote(1, 0.0)), now - 39),
        # a fallback: the teacher's answer served, the student's rejected answer noted
        row("req_f1", "fallback", "Mi pedido a Quito", '{"city": "Quito"}',
            ExchangeExtra(student=StudentNote(version=1, confidence=-2.5, reason="low_confidence",
                                              message={"role": "assistant", "content": '{"city": "Qu'})), now - 30),
        row("req_t1", "teacher", "Unrelated", "fine", ExchangeExtra(), now - 20),
    ]

    async def run() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        await db.add_student(StudentVersion(task=TASK, version=1, status="candidate", model="tiny",
                                            created_at=now - 3600, updated_at=now, threshold=-1.0,
                                            details=StudentDetails(evaluation=evaluation.to_dict())))
        await db.set_student_status(TASK, 1, "active")
        await db.insert_exchanges(rows)
        await db.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console-examples")
    seed(folder / "store.db")
    server = start_gateway(folder, "--store", f"sqlite:///{folder / 'store.db'}", "--teacher", "openai/gpt-4o-mini",
                           "--teacher-api-base", f"{katan.url}/v1", "--teacher-api-key", "sk-t",
                           "--admin-token", ADMIN)
    yield server
    stop(server.proc)


def exported(gateway: Server, query: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gateway.url}/admin/ui/tasks/{TASK}/examples?{query}&format=jsonl",
                         headers={"authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in response.headers["content-disposition"]
    return [json.loads(line) for line in response.text.splitlines()]


def rows_of(driver: Any) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [[cell.text for cell in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#examples-table tbody tr")]


def test_a_reviewer_reads_the_answers_filters_the_disagreements_and_exports_them(
        gateway: Server, browser: Any) -> None:  # noqa: F811 (the fixture imported from test_console)
    from selenium.webdriver.common.by import By

    driver = browser
    driver.delete_all_cookies()
    login(driver, gateway, ADMIN)
    driver.get(f"{gateway.url}/admin/ui/tasks/{TASK}")
    navigating(driver, driver.find_element(By.ID, "heldout-link").click)

    # held-out: the test split as v1 answered it, side by side with the teacher's answers
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Held-out examples {TASK}"
    held = rows_of(driver)
    assert len(held) == 3 and held[2][1] == '{"city": "Madrid"}' and held[2][2] == '{"city": null}'
    assert held[2][3] == "0.00" and len(driver.find_elements(By.CSS_SELECTOR, "tr.disagrees")) == 1
    audit(driver)
    screenshot(driver, "examples-heldout")
    navigating(driver, driver.find_element(By.ID, "filter-disagreements").click)
    assert [r[0].splitlines()[0] for r in rows_of(driver)] == ["Hola, mi pedido"]
    assert text_of(driver, "#examples-caption") == "1 of 3 (disagreements only)"
    assert [e["request_id"] for e in exported(gateway, "list=heldout&only=disagreements")] == ["req_h2"]
    assert len(exported(gateway, "list=heldout&version=1")) == 3

    # live shadow comparisons: the teacher's background answer beside the student's served one
    navigating(driver, driver.find_element(By.LINK_TEXT, "Live shadow comparisons").click)
    shadow = rows_of(driver)
    assert [(r[1], r[2], r[3]) for r in shadow] == [('{"city": "Bergen"}', '{"city": "Oslo"}', "0.00"),
                                                    ('{"city": "Rome"}', '{"city": "Rome"}', "1.00")]  # newest first
    audit(driver)
    screenshot(driver, "examples-shadow")
    [disagreement] = exported(gateway, "list=shadow&only=disagreements")
    assert disagreement["request_id"] == "req_s2" and disagreement["score"] == 0.0
    assert disagreement["student"] == '{"city": "Oslo"}' and disagreement["version"] == 1

    # fallbacks: why the student's answer was rejected, what it said, what was served instead
    navigating(driver, driver.find_element(By.LINK_TEXT, "Fallbacks").click)
    [fallback] = rows_of(driver)
    assert fallback[1] == '{"city": "Quito"}' and fallback[2] == '{"city": "Qu'
    assert "low_confidence, confidence -2.500" in fallback[3]
    audit(driver)
    screenshot(driver, "examples-fallbacks")
    [line] = exported(gateway, "list=fallbacks&window=24h")
    assert line["note"] == "low_confidence, confidence -2.500" and line["score"] is None


def test_bad_lists_unknown_tasks_and_anonymous_readers_are_refused(gateway: Server) -> None:
    auth = {"authorization": f"Bearer {ADMIN}"}
    base = f"{gateway.url}/admin/ui/tasks"
    assert httpx.get(f"{base}/{TASK}/examples?list=everything", headers=auth).status_code == 400
    assert httpx.get(f"{base}/{TASK}/examples?format=csv", headers=auth).status_code == 400
    assert httpx.get(f"{base}/nope/examples", headers=auth).status_code == 404
    anonymous = httpx.get(f"{base}/{TASK}/examples?format=jsonl", follow_redirects=False)
    assert anonymous.status_code in (302, 303, 401) and "city" not in anonymous.text
