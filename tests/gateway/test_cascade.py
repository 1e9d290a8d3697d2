"""The cascade with two real processes: the embedded model server (tiny random Llama) as the student
and llm-katan as the teacher, through the gateway, with the openai SDK as the client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.store import StudentVersion, open_store
from gateway.tasks import text_hash
from tests.servers import Server, captured_rows, metric, start_model_server, stop

ADMIN = "admin-secret-token"
TASK = "tickets"
SYSTEM = "You extract the city from support tickets."


@pytest.fixture(scope="module")
def student_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_model_server(tmp_path_factory.mktemp("student"), "--model", str(tiny_model),
                                "--served-model-name", "tiny", "--threads", "1")
    yield server
    stop(server.proc)


def register(store: Path, *, threshold: float | None = None, distilled: bool = False, version: int = 1,
             model: str = "tiny") -> None:
    async def run() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        await db.add_student(StudentVersion(
            task=TASK, version=version, status="candidate", model=model, created_at=now, updated_at=now,
            threshold=threshold, prompt_distilled=distilled,
            system_prompt_hash=text_hash(SYSTEM) if distilled else None))
        await db.set_student_status(TASK, version, "active")
        await db.close()

    asyncio.run(run())


def admin(gateway: Server, method: str, path: str, body: dict[str, object] | None = None) -> httpx.Response:
    return httpx.request(method, f"{gateway.url}/admin{path}", json=body,
                         headers={"authorization": f"Bearer {ADMIN}"})


@pytest.fixture
def cascade(katan: Server, student_server: Server, gateway_factory: Callable[..., Server],
            tmp_path: Path) -> Callable[..., tuple[Server, Path]]:
    def make(*, threshold: float | None = None, distilled: bool = False, percent: float = 100,
             teacher: Server | None = None, degraded: bool = False,
             student: Server | None = None, shadow: float = 0, student_prices: tuple[float, float] | None = None,
             ) -> tuple[Server, Path]:
        store = tmp_path / "store.db"
        config = tmp_path / "protege.yaml"
        prices = (f"  input_cost_per_token: {student_prices[0]}\n  output_cost_per_token: {student_prices[1]}\n"
                  if student_prices else "")
        config.write_text(f"cascade:\n  timeout_s: 5\n  refresh_s: 0.2\n  degraded_mode: {str(degraded).lower()}\n"
                          f"  shadow_rate: {shadow}\n{prices}retry:\n  attempts: 0\n")
        register(store, threshold=threshold, distilled=distilled)
        upstream = teacher or katan
        gateway = gateway_factory(
            "--config", str(config), "--store", f"sqlite:///{store}", "--teacher", "openai/gpt-4o-mini",
            "--teacher-api-base", f"{upstream.url}/v1", "--teacher-api-key", "sk-t",
            "--student-api-base", f"{(student or student_server).url}/v1", "--admin-token", ADMIN)
        assert admin(gateway, "PUT", f"/tasks/{TASK}/rollout", {"percent": percent}).status_code == 200
        return gateway, store

    return make


def chat(gateway: Server, user: str = "u1", *, stream: bool = False, **kwargs: object) -> tuple[str, dict[str, str]]:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "My order to Oslo is late."}]
    # a random tiny model never says EOS: a common stop string ends its greedy answer with "stop"
    params = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 40, "temperature": 0, "stop": ["e"],
              "user": user,
              "extra_headers": {"X-Protege-Task": TASK}, **kwargs}
    if stream:
        with client.chat.completions.with_streaming_response.create(stream=True, **params) as response:  # type: ignore[call-overload]
            headers = dict(response.headers)
            chunks = [json.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
        assert all("error" not in c for c in chunks)
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]), headers
    raw = client.chat.completions.with_raw_response.create(**params)  # type: ignore[call-overload]
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


def routes(store: Path) -> list[tuple[str, str]]:
    return [(r["route"], r["status"]) for r in captured_rows(store)]


def test_rollout_zero_sends_everything_to_the_teacher(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, store = cascade(percent=0)
    for user in ("a", "b", "c"):
        text, headers = chat(gateway, user)
        assert headers["x-protege-route"] == "teacher" and "User: My order" in text
    assert routes(store) == [("teacher", "ok")] * 3


@pytest.mark.parametrize("stream", [False, True])
def test_full_rollout_serves_the_student(cascade: Callable[..., tuple[Server, Path]], stream: bool) -> None:
    gateway, store = cascade(percent=100)
    text, headers = chat(gateway, stream=stream)
    assert headers["x-protege-route"] == "student"
    assert headers["x-protege-student"] == "tiny@v1"
    assert float(headers["x-protege-confidence"]) <= 0
    assert "[echo]" not in text  # the student's words, not the echo teacher's
    assert routes(store) == [("student", "ok")]
    models = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x").models.list()
    assert {m.id for m in models.data} == {"gpt-4o-mini", "tiny"}


@pytest.mark.parametrize("stream", [False, True])
def test_low_confidence_falls_back_to_the_teacher(cascade: Callable[..., tuple[Server, Path]], stream: bool) -> None:
    gateway, store = cascade(percent=100, threshold=-0.001)  # a random tiny model is never this sure
    text, headers = chat(gateway, stream=stream)
    assert headers["x-protege-route"] == "fallback" and "User: My order" in text
    assert routes(store) == [("fallback", "ok")]
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'protege_fallbacks_total{{reason="low_confidence",task="{TASK}"}} 1.0' in metrics


def test_invalid_json_from_student_in_json_mode_falls_back(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, _ = cascade(percent=100)
    text, headers = chat(gateway, response_format={"type": "json_object"})
    assert headers["x-protege-route"] == "fallback"
    assert json.loads(text)["response"].endswith("User: My order to Oslo is late.")
    assert 'reason="validator"' in httpx.get(f"{gateway.url}/metrics").text


def test_sticky_rollout_across_percentages(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, _ = cascade(percent=30)
    users = [f"user-{i}" for i in range(12)]
    first = {u: chat(gateway, u)[1]["x-protege-route"] for u in users}
    again = {u: chat(gateway, u)[1]["x-protege-route"] for u in users}
    assert first == again  # the same user gets the same route
    assert set(first.values()) == {"student", "teacher"}
    admin(gateway, "PUT", f"/tasks/{TASK}/rollout", {"percent": 70})
    wider = {u: chat(gateway, u)[1]["x-protege-route"] for u in users}
    assert all(wider[u] == "student" for u in users if first[u] == "student")  # nobody is moved back
    assert sum(r == "student" for r in wider.values()) >= sum(r == "student" for r in first.values())


def test_prompt_distilled_student_only_for_its_system_prompt(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, _ = cascade(percent=100, distilled=True)
    assert chat(gateway)[1]["x-protege-route"] == "student"
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "system", "content": "Another prompt."}, {"role": "user", "content": "x"}],
        extra_headers={"X-Protege-Task": TASK})
    assert raw.headers["x-protege-route"] == "teacher"


@pytest.mark.parametrize("stream", [False, True])
def test_dead_student_falls_back_without_client_error(cascade: Callable[..., tuple[Server, Path]],
                                                      tiny_model: Path, tmp_path: Path, stream: bool) -> None:
    doomed = start_model_server(tmp_path, "--model", str(tiny_model), "--served-model-name", "tiny", "--threads", "1")
    gateway, _ = cascade(percent=100, student=doomed)
    assert chat(gateway)[1]["x-protege-route"] == "student"
    stop(doomed.proc)
    text, headers = chat(gateway, stream=stream)
    assert headers["x-protege-route"] == "fallback" and "User: My order" in text
    assert 'reason="student_error"' in httpx.get(f"{gateway.url}/metrics").text


def test_dead_teacher_with_degraded_mode_serves_the_student(cascade: Callable[..., tuple[Server, Path]],
                                                            katan_factory: Callable[..., Server]) -> None:
    teacher = katan_factory()
    gateway, store = cascade(percent=0, teacher=teacher, degraded=True)
    assert chat(gateway)[1]["x-protege-route"] == "teacher"
    stop(teacher.proc)
    text, headers = chat(gateway)
    assert headers["x-protege-route"] == "student" and text
    _, streamed = chat(gateway, stream=True)
    assert streamed["x-protege-route"] == "student"
    assert routes(store) == [("teacher", "ok"), ("student", "ok"), ("student", "ok")]
    assert 'protege_requests_total{route="teacher",status="failed",task="tickets"} 2.0' in httpx.get(
        f"{gateway.url}/metrics").text


def test_dead_teacher_without_degraded_mode_is_a_clean_502(cascade: Callable[..., tuple[Server, Path]],
                                                           katan_factory: Callable[..., Server]) -> None:
    teacher = katan_factory()
    gateway, _ = cascade(percent=0, teacher=teacher)
    stop(teacher.proc)
    with pytest.raises(openai.InternalServerError) as err:
        chat(gateway)
    assert err.value.status_code == 502


def test_admin_promote_rollback_threshold(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, store = cascade(percent=100)
    register(store, version=2)  # v2 active, v1 retired
    time.sleep(0.5)
    assert chat(gateway)[1]["x-protege-student"] == "tiny@v2"
    assert admin(gateway, "POST", f"/tasks/{TASK}/rollback").json() == {
        "task": TASK, "retired_version": 2, "active_version": 1}
    assert chat(gateway)[1]["x-protege-student"] == "tiny@v1"
    assert admin(gateway, "POST", f"/tasks/{TASK}/promote", {"version": 2}).status_code == 200
    assert admin(gateway, "PUT", f"/tasks/{TASK}/threshold", {"threshold": -0.001}).json()["version"] == 2
    assert chat(gateway)[1]["x-protege-route"] == "fallback"
    listing = admin(gateway, "GET", "/tasks").json()["tasks"]
    [task] = [t for t in listing if t["task"] == TASK]
    assert task["rollout_percent"] == 100 and [s["status"] for s in task["students"]] == ["retired", "active"]
    assert admin(gateway, "POST", f"/tasks/{TASK}/promote", {"version": 9}).status_code == 404
    assert admin(gateway, "PUT", f"/tasks/{TASK}/rollout", {"percent": 101}).status_code == 400


def test_admin_needs_the_admin_token(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, _ = cascade()
    assert httpx.get(f"{gateway.url}/admin/tasks").status_code == 401
    assert httpx.get(f"{gateway.url}/admin/tasks", headers={"authorization": "Bearer nope"}).status_code == 403
    assert admin(gateway, "GET", "/tasks").status_code == 200


def test_cli_rollout_change_is_picked_up_without_restart(cascade: Callable[..., tuple[Server, Path]]) -> None:
    import subprocess
    import sys

    gateway, store = cascade(percent=0)
    assert chat(gateway)[1]["x-protege-route"] == "teacher"
    subprocess.run([sys.executable, "-m", "distiller.cli", "rollout", "--store", f"sqlite:///{store}", "--task", TASK,
                    "--percent", "100"], check=True, capture_output=True)
    time.sleep(0.5)  # the gateway re-reads routing every 0.2 s in this test
    assert chat(gateway)[1]["x-protege-route"] == "student"


def test_shadow_scoring_measures_live_parity_and_captures_the_teacher(
        cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, store = cascade(percent=100, shadow=1.0)
    for user in ("a", "b"):
        assert chat(gateway, user)[1]["x-protege-route"] == "student"
    time.sleep(0.5)  # shadow calls run in the background, after the response
    assert sorted(routes(store)) == [("shadow", "ok"), ("shadow", "ok"), ("student", "ok"), ("student", "ok")]
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert f'protege_shadow_comparisons_total{{task="{TASK}",version="1"}} 2.0' in metrics
    assert f'protege_live_parity{{task="{TASK}",version="1"}} 0.0' in metrics  # random student vs echo teacher
    [task] = [t for t in admin(gateway, "GET", "/tasks").json()["tasks"] if t["task"] == TASK]
    assert task["students"][0]["live_parity"] == {"comparisons": 2, "mean_agreement": 0.0}
    export = tmp_export(store)
    assert len(export) == 2 and all(line["messages"][-1]["content"].startswith("[echo]") for line in export)


def tmp_export(store: Path) -> list[dict[str, Any]]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "distiller.cli", "export", "--store", f"sqlite:///{store}",
                          "--task", TASK, "--out", "-"], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_gateway_loads_a_promoted_adapter_into_the_student_server(
        cascade: Callable[..., tuple[Server, Path]], tiny_model: Path, tmp_path: Path) -> None:
    """A version promoted elsewhere (e.g. by `protege distill --promote`) is loaded by the gateway."""
    from tests.local.test_model_server_adapters import make_lora

    adapter = make_lora(tiny_model, tmp_path / "adapter", seed=3, targets=["q_proj", "v_proj"])
    server = start_model_server(tmp_path, "--model", str(tiny_model), "--served-model-name", "tiny", "--threads", "1")
    gateway, store = cascade(percent=100, student=server)

    async def promote_adapter() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        await db.add_student(StudentVersion(task=TASK, version=2, status="candidate", model=f"{TASK}-v2",
                                            created_at=now, updated_at=now, trainer="local", artifact=str(adapter)))
        await db.set_student_status(TASK, 2, "active")
        await db.close()

    asyncio.run(promote_adapter())
    time.sleep(1.0)  # next routing refresh loads the adapter
    _, headers = chat(gateway)
    assert headers["x-protege-student"] == f"{TASK}-v2@v2"
    listed = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert f"{TASK}-v2" in {m["id"] for m in listed}
    stop(server.proc)






TEACHER_PRICE = (0.15e-6, 0.60e-6)  # gpt-4o-mini in litellm's bundled price map
STUDENT_PRICE = (0.01e-6, 0.02e-6)


def test_a_fallback_pays_for_the_teacher_and_the_student_attempt(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, store = cascade(percent=100, threshold=-0.001, student_prices=STUDENT_PRICE)
    assert chat(gateway)[1]["x-protege-route"] == "fallback"
    [row] = captured_rows(store)
    teacher_cost = row["prompt_tokens"] * TEACHER_PRICE[0] + row["completion_tokens"] * TEACHER_PRICE[1]
    student_cost = json.loads(row["extra_json"])["student"]["cost_usd"]
    assert student_cost > 0
    assert row["cost_usd"] == pytest.approx(teacher_cost + student_cost)
    assert metric(gateway, "protege_cost_usd_total", route="fallback") == pytest.approx(teacher_cost + student_cost)
    # the teacher alone would have paid its own answer only
    assert metric(gateway, "protege_counterfactual_cost_usd_total", route="fallback") == pytest.approx(teacher_cost)
    assert metric(gateway, "protege_tokens_total", model="tiny", kind="input") > 0  # the attempt's tokens count


def test_a_student_answer_records_what_the_teacher_would_have_cost(
        cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, store = cascade(percent=100, distilled=True, student_prices=STUDENT_PRICE)
    assert chat(gateway)[1]["x-protege-route"] == "student"
    [row] = captured_rows(store)
    assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * STUDENT_PRICE[0]
                                            + row["completion_tokens"] * STUDENT_PRICE[1])
    # the student read the messages without the distilled system prompt; the teacher would have read all
    user = "My order to Oslo is late."
    teacher_prompt = round(row["prompt_tokens"] * len(SYSTEM + user) / len(user))
    expected = teacher_prompt * TEACHER_PRICE[0] + row["completion_tokens"] * TEACHER_PRICE[1]
    assert json.loads(row["extra_json"])["counterfactual_cost_usd"] == pytest.approx(expected)
    assert metric(gateway, "protege_counterfactual_cost_usd_total", route="student") == pytest.approx(expected)
    savings = (metric(gateway, "protege_counterfactual_cost_usd_total")
               - metric(gateway, "protege_cost_usd_total"))
    assert savings == pytest.approx(expected - row["cost_usd"]) and savings > 0


def test_registry_and_rollout_gauges_without_traffic(cascade: Callable[..., tuple[Server, Path]]) -> None:
    gateway, store = cascade(percent=40)

    async def add_rejected() -> None:  # a training run that failed its gate
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        await db.add_student(StudentVersion(task=TASK, version=2, status="rejected", model="tiny-v2", created_at=now,
                                            updated_at=now, details={"training_s": 129.5}))
        await db.close()

    asyncio.run(add_rejected())
    deadline = time.monotonic() + 5
    while metric(gateway, "protege_student_versions", task=TASK, status="rejected") != 1:  # next refresh (0.2 s)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(gateway, "protege_rollout_percent", task=TASK) == 40  # no request was sent
    assert metric(gateway, "protege_student_versions", task=TASK, status="active") == 1
    assert metric(gateway, "protege_last_training_seconds", task=TASK) == 129.5  # the newest version's
