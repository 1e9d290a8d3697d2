"""The cascade against two real upstream processes: the embedded model server (tiny random Llama) as the
student and llm-katan as the teacher, through the gateway app in this process (`tests.inprocess`), with
the openai SDK as the client."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, redirect_stderr, suppress
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from gateway.config import Settings
from gateway.scoring import ScorerSpec, SimilarityScale
from gateway.scoring.similarity import cosine
from gateway.store import ServingPrice, StudentDetails, StudentVersion, open_store
from gateway.tasks import text_hash
from tests.inprocess import InProcessGateway, inprocess_gateway, poll, settings_for
from tests.servers import Server

ADMIN = "admin-secret-token"
TASK = "tickets"
SYSTEM = "You extract the city from support tickets."


@pytest.fixture
def student_server(tiny_student: Server) -> Server:
    return tiny_student  # the session's model server with the tiny Llama, served as "tiny"


class Link:
    """A TCP forwarder to a real upstream server. `cut()` makes that upstream vanish for the gateway the way
    a killed process does: the port refuses new connections and every open connection is closed. Tests of
    a dead upstream cut a link instead of starting (and killing) a server of their own."""

    def __init__(self, target: Server) -> None:
        self._target = target.port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # cut
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._conns.discard(sock)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            conns = list(self._conns)
        self._close(self._listener)  # shutdown wakes the accept() in the other thread
        self._thread.join(timeout=5)
        self._close(*conns)


@pytest.fixture
def link() -> Iterator[Callable[[Server], Link]]:
    made: list[Link] = []

    def make(target: Server) -> Link:
        made.append(Link(target))
        return made[-1]

    yield make
    for one in made:
        one.cut()


# a threshold every answer reaches: the student is then judged on the validators alone (a version without a
# threshold serves no routed traffic)
ACCEPT_ANY = -1000.0


def register(store: Path, *, threshold: float | None = ACCEPT_ANY, distilled: bool = False, version: int = 1,
             model: str = "tiny", serving_price: ServingPrice | None = None,
             scorer: dict[str, Any] | None = None) -> None:
    """An active student version, written to the store through a connection of its own (as the CLI or a
    training run elsewhere writes it)."""
    async def run() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        await db.add_student(StudentVersion(
            task=TASK, version=version, status="candidate", model=model, created_at=now, updated_at=now,
            threshold=threshold, prompt_distilled=distilled,
            system_prompt_hash=text_hash(SYSTEM) if distilled else None,
            details=StudentDetails(serving_price=serving_price, scorer=scorer)))
        await db.set_student_status(TASK, version, "active")
        await db.close()

    asyncio.run(run())


def admin(gateway: InProcessGateway, method: str, path: str,
          body: dict[str, object] | None = None) -> httpx2.Response:
    return gateway.client.request(method, f"/admin{path}", json=body, headers={"authorization": f"Bearer {ADMIN}"})


def cascade_settings(teacher: Server | Link, student: Server | Link, store: Path, *,
                     teacher_api_key: str | None = "sk-t", **cascade: Any) -> Settings:
    """`protege serve --config <cascade: timeout_s 5, refresh_s 0.2, shadow_rate 0 …; retry: attempts 0> --store …
    --teacher openai/gpt-4o-mini --teacher-api-base <teacher>/v1 --teacher-api-key sk-t --student-api-base <student>/v1
    --admin-token …` (teacher_api_key None: no --teacher-api-key)."""
    return settings_for(None, store, config={"cascade": {"timeout_s": 5, "refresh_s": 0.2, "shadow_rate": 0, **cascade},
                                             "retry": {"attempts": 0}},
                        teacher="openai/gpt-4o-mini", teacher_api_base=f"{teacher.url}/v1",
                        teacher_api_key=teacher_api_key,
                        student_api_base=f"{student.url}/v1", admin_token=ADMIN)


@pytest.fixture
def cascade(katan: Server, student_server: Server, tmp_path: Path,
            ) -> Iterator[Callable[..., tuple[InProcessGateway, Path]]]:
    with ExitStack() as stack:
        def make(*, threshold: float | None = ACCEPT_ANY, distilled: bool = False, percent: float = 100,
                 teacher: Server | Link | None = None, degraded: bool = False,
                 student: Server | Link | None = None, shadow: float = 0,
                 student_prices: tuple[float, float] | None = None,
                 serving_price: ServingPrice | None = None,
                 scorer: dict[str, Any] | None = None) -> tuple[InProcessGateway, Path]:
            store = tmp_path / "store.db"
            register(store, threshold=threshold, distilled=distilled, serving_price=serving_price, scorer=scorer)
            settings = cascade_settings(teacher or katan, student or student_server, store, degraded_mode=degraded,
                                        shadow_rate=shadow,  # None: no student price, as when not configured
                                        input_cost_per_token=student_prices[0] if student_prices else None,
                                        output_cost_per_token=student_prices[1] if student_prices else None)
            gateway = stack.enter_context(inprocess_gateway(settings))
            assert admin(gateway, "PUT", f"/tasks/{TASK}/rollout", {"percent": percent}).status_code == 200
            return gateway, store

        yield make


def chat(gateway: InProcessGateway, user: str = "u1", *, stream: bool = False,
         **kwargs: object) -> tuple[str, dict[str, str]]:
    client = gateway.openai(api_key="x")
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


def routes(gateway: InProcessGateway) -> list[tuple[str, str]]:
    return [(r.route, r.status) for r in gateway.rows()]


def routed_student(gateway: InProcessGateway) -> str | None:
    """The student the routing table sends TASK to, as the x-protege-student header names it; the table is
    re-read from the store when it is older than refresh_s, as on a request."""
    students = gateway.state.service.students
    assert students is not None
    route = gateway.run(students.table.route(TASK))
    return None if route is None else f"{route.student.model}@v{route.student.version}"


def test_rollout_zero_sends_everything_to_the_teacher(cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=0)
    for user in ("a", "b", "c"):
        text, headers = chat(gateway, user)
        assert headers["x-protege-route"] == "teacher" and "User: My order" in text
    assert routes(gateway) == [("teacher", "ok")] * 3


@pytest.mark.parametrize("stream", [False, True])
def test_full_rollout_serves_the_student(cascade: Callable[..., tuple[InProcessGateway, Path]], stream: bool) -> None:
    gateway, _ = cascade(percent=100)
    text, headers = chat(gateway, stream=stream)
    assert headers["x-protege-route"] == "student"
    assert headers["x-protege-student"] == "tiny@v1"
    assert float(headers["x-protege-confidence"]) <= 0
    assert "[echo]" not in text  # the student's words, not the echo teacher's
    assert routes(gateway) == [("student", "ok")]
    models = gateway.openai(api_key="x").models.list()
    assert {m.id for m in models.data} == {"gpt-4o-mini", "tiny"}


@pytest.mark.parametrize("stream", [False, True])
def test_low_confidence_falls_back_to_the_teacher(cascade: Callable[..., tuple[InProcessGateway, Path]],
                                                  stream: bool) -> None:
    gateway, _ = cascade(percent=100, threshold=-0.001)  # a random tiny model is never this sure
    text, headers = chat(gateway, stream=stream)
    assert headers["x-protege-route"] == "fallback" and "User: My order" in text
    assert routes(gateway) == [("fallback", "ok")]
    metrics = gateway.metrics_text()
    assert f'protege_fallbacks_total{{reason="low_confidence",task="{TASK}"}} 1.0' in metrics


def test_invalid_json_from_student_in_json_mode_falls_back(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=100)
    text, headers = chat(gateway, response_format={"type": "json_object"})
    assert headers["x-protege-route"] == "fallback"
    assert json.loads(text)["response"].endswith("User: My order to Oslo is late.")
    assert 'reason="validator"' in gateway.metrics_text()


def test_sticky_rollout_across_percentages(cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
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


def test_prompt_distilled_student_only_for_its_system_prompt(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=100, distilled=True)
    assert chat(gateway)[1]["x-protege-route"] == "student"
    raw = gateway.openai(api_key="x").chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "system", "content": "Another prompt."}, {"role": "user", "content": "x"}],
        extra_headers={"X-Protege-Task": TASK})
    assert raw.headers["x-protege-route"] == "teacher"


@pytest.mark.parametrize("stream", [False, True])
def test_dead_student_falls_back_without_client_error(cascade: Callable[..., tuple[InProcessGateway, Path]],
                                                      student_server: Server, link: Callable[[Server], Link],
                                                      stream: bool) -> None:
    doomed = link(student_server)  # the student server as this gateway reaches it; cut = killed
    gateway, _ = cascade(percent=100, student=doomed)
    assert chat(gateway)[1]["x-protege-route"] == "student"
    doomed.cut()
    text, headers = chat(gateway, stream=stream)
    assert headers["x-protege-route"] == "fallback" and "User: My order" in text
    assert 'reason="student_error"' in gateway.metrics_text()


def test_dead_teacher_with_degraded_mode_serves_the_student(cascade: Callable[..., tuple[InProcessGateway, Path]],
                                                            katan: Server, link: Callable[[Server], Link]) -> None:
    teacher = link(katan)
    gateway, _ = cascade(percent=0, teacher=teacher, degraded=True)
    assert chat(gateway)[1]["x-protege-route"] == "teacher"
    teacher.cut()
    text, headers = chat(gateway)
    assert headers["x-protege-route"] == "student" and text
    _, streamed = chat(gateway, stream=True)
    assert streamed["x-protege-route"] == "student"
    assert routes(gateway) == [("teacher", "ok"), ("student", "ok"), ("student", "ok")]
    assert 'protege_requests_total{route="teacher",status="failed",task="tickets"} 2.0' in gateway.metrics_text()


def test_dead_teacher_without_degraded_mode_is_a_clean_502(cascade: Callable[..., tuple[InProcessGateway, Path]],
                                                           katan: Server, link: Callable[[Server], Link]) -> None:
    teacher = link(katan)
    gateway, _ = cascade(percent=0, teacher=teacher)
    teacher.cut()
    with pytest.raises(openai.InternalServerError) as err:
        chat(gateway)
    assert err.value.status_code == 502


def test_admin_promote_rollback_threshold(cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, store = cascade(percent=100)
    register(store, version=2)  # v2 active, v1 retired (written by another store connection)
    poll(lambda: routed_student(gateway) == "tiny@v2", what="the routing refresh to pick up v2")
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


def test_admin_needs_the_admin_token(cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade()
    assert gateway.client.get("/admin/tasks").status_code == 401
    assert gateway.client.get("/admin/tasks", headers={"authorization": "Bearer nope"}).status_code == 403
    assert admin(gateway, "GET", "/tasks").status_code == 200


def test_cli_rollout_change_is_picked_up_without_restart(cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, store = cascade(percent=0)
    assert chat(gateway)[1]["x-protege-route"] == "teacher"
    # the real `protege rollout` process writes the store; the running gateway re-reads it (every 0.2 s here)
    subprocess.run([sys.executable, "-m", "protege", "rollout", "--store", f"sqlite:///{store}", "--task", TASK,
                    "--percent", "100"], check=True, capture_output=True)
    poll(lambda: chat(gateway)[1]["x-protege-route"] == "student", timeout=10, interval=0.1,
         what="the gateway to route to the student")


def test_shadow_scoring_measures_live_parity_and_captures_the_teacher(
        cascade: Callable[..., tuple[InProcessGateway, Path]], tmp_path: Path) -> None:
    gateway, store = cascade(percent=100, shadow=1.0)
    for user in ("a", "b"):
        assert chat(gateway, user)[1]["x-protege-route"] == "student"
    # shadow calls run in the background, after the response: wait for both of their rows
    poll(lambda: len(gateway.rows()) >= 4, what="the two shadow rows")
    assert sorted(routes(gateway)) == [("shadow", "ok"), ("shadow", "ok"), ("student", "ok"), ("student", "ok")]
    metrics = gateway.metrics_text()
    assert f'protege_shadow_comparisons_total{{task="{TASK}",version="1"}} 2.0' in metrics
    assert f'protege_live_parity{{task="{TASK}",version="1"}} 0.0' in metrics  # random student vs echo teacher
    [task] = [t for t in admin(gateway, "GET", "/tasks").json()["tasks"] if t["task"] == TASK]
    assert task["students"][0]["live_parity"] == {"comparisons": 2, "mean_agreement": 0.0}
    export = tmp_export(store, tmp_path / "export.jsonl")
    assert len(export) == 2 and all(line["messages"][-1]["content"].startswith("[echo]") for line in export)


def test_shadow_scoring_uses_the_versions_own_scorer(cascade: Callable[..., tuple[InProcessGateway, Path]],
                                                     student_server: Server) -> None:
    """A version registered with the similarity scorer is compared on its scale, with embeddings from the student
    server: live parity is the same figure its gate saw, not exact match."""
    scale = SimilarityScale(same=0.95, other=0.05, pairs=8, source="test")
    spec = ScorerSpec("similarity", "test", scale=scale, embeddings_model="all-MiniLM-L6-v2")
    gateway, _ = cascade(percent=100, shadow=1.0, scorer=spec.to_json())
    answer, headers = chat(gateway)
    assert headers["x-protege-route"] == "student"
    poll(lambda: len(gateway.rows()) >= 2, what="the shadow row")
    [shadow] = [r for r in gateway.rows() if r.route == "shadow"]
    teacher = shadow.response["choices"][0]["message"]["content"]
    vectors = httpx.post(f"{student_server.url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2",
                         "input": [answer, teacher]}, timeout=60).json()["data"]
    expected = scale.agreement(cosine(vectors[0]["embedding"], vectors[1]["embedding"]))
    assert shadow.extra.shadow is not None and shadow.extra.shadow.agreement == pytest.approx(expected, abs=1e-3)
    assert 0 < expected < 1  # a random answer to an echo is neither nothing nor the teacher: exact match says 0
    assert f'protege_live_parity{{task="{TASK}",version="1"}} {shadow.extra.shadow.agreement}' in gateway.metrics_text()


def test_a_shadow_comparison_the_gateway_cannot_score_is_counted_not_guessed(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    """A version judged by an LLM judge this gateway has no config for: the teacher's answer is still captured,
    but no agreement is recorded (an exact-match 0 would pull live parity down for nothing)."""
    gateway, _ = cascade(percent=100, shadow=1.0, scorer=ScorerSpec("judge", "test", judge="gpt-4o").to_json())
    assert chat(gateway)[1]["x-protege-route"] == "student"
    poll(lambda: len(gateway.rows()) >= 2, what="the shadow row")
    [shadow] = [r for r in gateway.rows() if r.route == "shadow"]
    assert shadow.extra.shadow is None and shadow.status == "ok"
    metrics = gateway.metrics_text()
    assert f'protege_shadow_unscored_total{{reason="unavailable",task="{TASK}"}} 1.0' in metrics
    assert "protege_live_parity{" not in metrics


def tmp_export(store: Path, out: Path) -> list[dict[str, Any]]:
    """`protege export --task tickets` (the CLI's main, in this process) of the store."""
    from protege.cli import main

    with redirect_stderr(StringIO()):
        assert main(["export", "--store", f"sqlite:///{store}", "--task", TASK, "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_gateway_loads_a_promoted_adapter_into_the_student_server(
        cascade: Callable[..., tuple[InProcessGateway, Path]], student_server: Server, tiny_model: Path,
        tmp_path: Path) -> None:
    """A version promoted elsewhere (e.g. by `protege distill --promote`) is loaded by the gateway."""
    from tests.model_server.test_model_server_adapters import make_lora

    name = f"{TASK}-v2"

    def served() -> set[str]:
        return {m["id"] for m in httpx.get(f"{student_server.url}/v1/models", timeout=10).json()["data"]}

    adapter = make_lora(tiny_model, tmp_path / "adapter", seed=3, targets=["q_proj", "v_proj"])
    assert name not in served()  # the module's student server: nobody loaded it before
    gateway, store = cascade(percent=100)

    async def promote_adapter() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        await db.add_student(StudentVersion(task=TASK, version=2, status="candidate", model=name,
                                            created_at=now, updated_at=now, trainer="local", artifact=str(adapter),
                                            threshold=ACCEPT_ANY))
        await db.set_student_status(TASK, 2, "active")
        await db.close()

    try:
        asyncio.run(promote_adapter())
        # the next routing refresh loads the adapter; the gateway lists the student only once it is loaded
        poll(lambda: name in {m.id for m in gateway.openai(api_key="x").models.list().data}, timeout=30,
             interval=0.1, what="the gateway to load the adapter")
        _, headers = chat(gateway)
        assert headers["x-protege-student"] == f"{name}@v2"
        assert name in served()
    finally:  # leave the shared student server as it was
        httpx.post(f"{student_server.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)


TEACHER_PRICE = (0.15e-6, 0.60e-6)  # gpt-4o-mini in litellm's bundled price map
STUDENT_PRICE = (0.01e-6, 0.02e-6)


def test_a_fallback_pays_for_the_teacher_and_the_student_attempt(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=100, threshold=-0.001, student_prices=STUDENT_PRICE)
    assert chat(gateway)[1]["x-protege-route"] == "fallback"
    [row] = gateway.rows()
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    teacher_cost = row.prompt_tokens * TEACHER_PRICE[0] + row.completion_tokens * TEACHER_PRICE[1]
    assert row.extra.student is not None
    student_cost = row.extra.student.cost_usd
    assert student_cost is not None and student_cost > 0
    assert row.cost_usd == pytest.approx(teacher_cost + student_cost)
    assert row.extra.price_source is not None and row.extra.price_source.startswith("list price (gpt-4o-mini")
    assert gateway.metric("protege_cost_usd_total", route="fallback") == pytest.approx(teacher_cost + student_cost)
    # the teacher alone would have paid its own answer only
    assert gateway.metric("protege_counterfactual_cost_usd_total", route="fallback") == pytest.approx(teacher_cost)
    assert gateway.metric("protege_tokens_total", model="tiny", kind="input") > 0  # the attempt's tokens count


def test_a_student_without_a_token_price_is_priced_by_compute_over_its_measured_throughput(
        cascade: Callable[..., tuple[InProcessGateway, Path]], student_server: Server) -> None:
    # one answer first, so that the server has measured something when the gateway reads it at start
    httpx.post(f"{student_server.url}/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    gateway, _ = cascade(percent=100)
    measured = httpx.get(f"{student_server.url}/throughput").json()
    assert measured["device"] == "cpu" and measured["tokens_per_s"] > 0
    assert chat(gateway)[1]["x-protege-route"] == "student"
    [row] = gateway.rows()
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    per_token = 0.10 / 3600 / measured["tokens_per_s"]  # compute.cpu_hour_usd's default over the measured rate
    assert row.cost_usd == pytest.approx((row.prompt_tokens + row.completion_tokens) * per_token)
    assert row.extra.price_source == (f"compute: cpu_hour_usd 0.1 (assumed (default)) over "
                                      f"{measured['tokens_per_s']:g} tokens/s (measured by the model server)")
    assert gateway.metric("protege_unknown_price_requests_total") == 0


HOSTED = ServingPrice(0.2e-6, 0.2e-6, "list price (together-ai-4.1b-8b in litellm's bundled price map): the size "
                      "tier of meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")


def test_a_hosted_version_is_billed_at_the_list_price_it_was_registered_with(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=100, serving_price=HOSTED)  # no per-token price configured
    assert chat(gateway)[1]["x-protege-route"] == "student"
    [row] = gateway.rows()
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    assert row.cost_usd == pytest.approx((row.prompt_tokens + row.completion_tokens) * 0.2e-6)
    assert row.extra.price_source == HOSTED.source


def test_a_configured_student_price_wins_over_a_versions_list_price(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=100, serving_price=HOSTED, student_prices=STUDENT_PRICE)
    assert chat(gateway)[1]["x-protege-route"] == "student"
    [row] = gateway.rows()
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    assert row.cost_usd == pytest.approx(row.prompt_tokens * STUDENT_PRICE[0]
                                         + row.completion_tokens * STUDENT_PRICE[1])
    assert row.extra.price_source == "configured"


def test_a_student_answer_records_what_the_teacher_would_have_cost(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=100, distilled=True, student_prices=STUDENT_PRICE)
    assert chat(gateway)[1]["x-protege-route"] == "student"
    [row] = gateway.rows()
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    assert row.cost_usd == pytest.approx(row.prompt_tokens * STUDENT_PRICE[0]
                                         + row.completion_tokens * STUDENT_PRICE[1])
    # the student read the messages without the distilled system prompt; the teacher would have read all
    user = "My order to Oslo is late."
    teacher_prompt = round(row.prompt_tokens * len(SYSTEM + user) / len(user))
    expected = teacher_prompt * TEACHER_PRICE[0] + row.completion_tokens * TEACHER_PRICE[1]
    assert row.extra.counterfactual_cost_usd == pytest.approx(expected)
    assert gateway.metric("protege_counterfactual_cost_usd_total", route="student") == pytest.approx(expected)
    savings = (gateway.metric("protege_counterfactual_cost_usd_total")
               - gateway.metric("protege_cost_usd_total"))
    assert row.cost_usd is not None and savings == pytest.approx(expected - row.cost_usd) and savings > 0


def test_registry_and_rollout_gauges_without_traffic(cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, store = cascade(percent=40)

    async def add_rejected() -> None:  # a training run that failed its gate
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        await db.add_student(StudentVersion(task=TASK, version=2, status="rejected", model="tiny-v2", created_at=now,
                                            updated_at=now, details=StudentDetails(training_s=129.5)))
        await db.close()

    asyncio.run(add_rejected())
    poll(lambda: gateway.metric("protege_student_versions", task=TASK, status="rejected") == 1, timeout=5,
         interval=0.1, what="the next refresh (0.2 s) to count the rejected version")
    assert gateway.metric("protege_rollout_percent", task=TASK) == 40  # no request was sent
    assert gateway.metric("protege_student_versions", task=TASK, status="active") == 1
    assert gateway.metric("protege_last_training_seconds", task=TASK) == 129.5  # the newest version's


def test_a_version_without_a_threshold_serves_no_routed_traffic(
        cascade: Callable[..., tuple[InProcessGateway, Path]]) -> None:
    gateway, _ = cascade(percent=100, threshold=None)  # calibration found no threshold reaching the target
    text, headers = chat(gateway)
    assert headers["x-protege-route"] == "teacher" and "User: My order" in text
    assert routes(gateway) == [("teacher", "ok")]
    assert gateway.metric("protege_student_without_threshold", task=TASK) == 1
    listed = admin(gateway, "GET", "/tasks").json()["tasks"]
    [student] = next(t for t in listed if t["task"] == TASK)["students"]
    assert student["threshold"] is None
    # a threshold set on purpose puts it back to work
    assert admin(gateway, "PUT", f"/tasks/{TASK}/threshold", {"threshold": ACCEPT_ANY}).status_code == 200
    time.sleep(0.3)  # past cascade.refresh_s
    assert chat(gateway)[1]["x-protege-route"] == "student"
    assert gateway.metric("protege_student_without_threshold", task=TASK) == 0
