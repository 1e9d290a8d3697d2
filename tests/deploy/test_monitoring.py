"""deploy/: the Grafana dashboard and the Prometheus config and rules, checked against a real gateway
(llm-katan as the teacher, the model server with a tiny random Llama as the student) and a real
Prometheus scraping it every second.

Prometheus and promtool come from Debian's package, unpacked under .venv by `make prometheus` (a
step of `make test`); where `make test` could install them (apt is there) a missing binary fails the
test rather than skipping it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.store import Exchange, StudentVersion, open_store
from tests.servers import REPO, Server, free_port, start_gateway, start_model_server, stop, wait_http
from tests.stores import captured

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "protege.json"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"

TEACHER_PRICE = (0.15e-6, 0.60e-6)  # gpt-4o-mini in litellm's bundled price map
STUDENT_PRICE = (0.01e-6, 0.02e-6)
SYSTEM = "You extract the city from support tickets."
SERVED = "tickets"  # its student answers
PICKY = "picky"  # its student is never confident enough: every request falls back
PLAIN = "plain"  # no student: the teacher answers
SAVINGS = "sum(protege_counterfactual_cost_usd_total) - sum(protege_cost_usd_total)"
SERVED_REQUESTS, SHADOWED = 16, 2

# a metric name, not part of a recording rule's name (level:metric:operations)
METRIC_NAME = re.compile(r"(?<![\w:])protege_[a-z0-9_]+(?![\w:])")
RECORDED_NAME = re.compile(r"(?<![\w:])[a-z_]+:protege_[a-z0-9_]+:[a-z0-9_]+(?![\w:])")
# what Grafana puts in for its own variables when it runs a query
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}


# --- the files -------------------------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold theirs


def variables(board: dict[str, Any]) -> dict[str, str]:
    """Each dashboard variable as a query would see it: every task, the textboxes' defaults."""
    values = dict(GRAFANA_BUILTINS)
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            values[var["name"]] = var["allValue"]
        elif var["type"] in ("textbox", "constant", "custom"):
            values[var["name"]] = str(var["current"]["value"])
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):  # $__range before $__rate_interval's prefix, etc.
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    board = dashboard()
    values = variables(board)
    return [(panel["title"], substitute(target["expr"], values))
            for panel in panels(board) for target in panel.get("targets", [])]


def rule_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [(rule.get("record") or rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def exported_names(metrics_text: str) -> set[str]:
    """Every series name /metrics can carry, including families with no sample yet (a labelled
    counter that has not moved still has its HELP and TYPE lines)."""
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_is_valid_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] == "protege-gateway" and board["title"] and board["schemaVersion"] >= 30
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    titles = {panel["title"] for panel in panels(board)}
    for wanted in ("Cost per request by task and route", "Savings per day", "Route mix", "Fallback rate by reason",
                   "Live parity vs gate", "Gateway overhead p50 / p99", "Capture queue depth",
                   "Captured per second", "Dropped per second"):
        assert wanted in titles
    for panel in panels(board):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
            assert all(target["expr"] and target["refId"] for target in panel["targets"])
    assert {var["name"] for var in board["templating"]["list"]} == {"datasource", "task", "gate", "floor"}


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    [provider] = yaml.safe_load((provisioning / "dashboards" / "protege.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].endswith("/protege")


def test_recording_rule_references_are_defined() -> None:
    defined = recorded_names()
    for name, expr in [*rule_queries(), *dashboard_queries()]:
        assert set(RECORDED_NAME.findall(expr)) <= defined, name


# --- promtool --------------------------------------------------------------------------------

def find_tool(name: str) -> Path:
    """The binary from `make prometheus` (PROTEGE_PROMETHEUS_BIN, default .venv/prometheus), else PATH."""
    folders = [Path(os.environ["PROTEGE_PROMETHEUS_BIN"])] if os.environ.get("PROTEGE_PROMETHEUS_BIN") else []
    folders.append(REPO / ".venv" / "prometheus" / "usr" / "bin")
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    found = shutil.which(name)
    if found:
        return Path(found)
    message = f"{name} not found: run `make prometheus` (Debian's package unpacked under .venv, no root needed)"
    if os.environ.get("PROTEGE_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def promtool(*args: str, cwd: Path = DEPLOY / "prometheus") -> str:
    done = subprocess.run([str(find_tool("promtool")), *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def with_token_file(config: dict[str, Any], folder: Path, token: str) -> dict[str, Any]:
    """The scrape config with its admin-token file at a path of this test's (the committed path is
    where compose's prometheus service writes it)."""
    token_file = folder / "admin-token"
    token_file.write_text(token)
    [job] = config["scrape_configs"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/prometheus/admin-token"}
    job["authorization"]["credentials_file"] = str(token_file)
    return config


def test_promtool_accepts_the_config_and_the_rules(tmp_path: Path) -> None:
    config = with_token_file(yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8")), tmp_path, "token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": [str(RULES)]}))
    assert "SUCCESS" in promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert f"SUCCESS: {len(rule_queries())} rules found" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("test", "rules", str(RULES_TEST))


# --- a gateway with a student, and Prometheus scraping it ------------------------------------

@dataclass
class Stack:
    gateway: Server  # no shadow calls: every student answer saves
    shadowing: Server  # a second replica on the same store that shadows every student answer (live parity)
    prometheus: Server
    store: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


def register_students(store: Path) -> None:
    async def run() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        for task, threshold in ((SERVED, -1000.0), (PICKY, -0.001)):  # a random tiny model is never this sure
            await db.add_student(StudentVersion(task=task, version=1, status="candidate", model="tiny",
                                                created_at=now, updated_at=now, threshold=threshold))
            await db.set_student_status(task, 1, "active")
            await db.set_rollout(task, 100)
        await db.close()

    asyncio.run(run())


def start_prometheus(folder: Path, gateways: list[Server]) -> Server:
    [token] = {gateway.admin_token for gateway in gateways}
    assert token is not None
    config = with_token_file(yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8")), folder, token)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{gateway.port}" for gateway in gateways]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(find_tool("prometheus")), f"--config.file={folder / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--log.level=warn"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"prometheus failed to start:\n{log.read_text(errors='replace')}") from None
    return Server(proc, port, log)


def ask(gateway: Server, task: str, user: str) -> httpx.Response:
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"My order to Oslo is late ({user})."}]
    # a random tiny model never says EOS: a common stop string ends its greedy answer
    response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, headers={"X-Protege-Task": task}, json={
        "model": "gpt-4o-mini", "messages": messages, "max_tokens": 40, "temperature": 0, "stop": ["e"],
        "user": user})
    assert response.status_code == 200, response.text
    return response


def rows(store: Path, route: str) -> list[Exchange]:
    return [e for e in captured(store) if e.route == route]


def wait_rows(store: Path, route: str, count: int, timeout: float = 15) -> list[Exchange]:
    deadline = time.monotonic() + timeout
    while len(found := rows(store, route)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(found) == count, (route, len(found))
    return found


@pytest.fixture(scope="module")
def stack(katan: Server, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("monitoring")
    student = start_model_server(folder, "--model", str(tiny_model), "--served-model-name", "tiny", "--threads", "1")
    store = folder / "store.db"
    register_students(store)
    started: list[Server] = [student]
    try:
        gateways = []
        for shadow_rate in (0.0, 1.0):
            config = folder / f"protege-shadow-{shadow_rate}.yaml"
            config.write_text(f"cascade:\n  timeout_s: 10\n  refresh_s: 0.2\n  shadow_rate: {shadow_rate}\n"
                              f"  input_cost_per_token: {STUDENT_PRICE[0]}\n"
                              f"  output_cost_per_token: {STUDENT_PRICE[1]}\nretry:\n  attempts: 0\n")
            gateways.append(start_gateway(
                folder, "--config", str(config), "--store", f"sqlite:///{store}", "--teacher", "openai/gpt-4o-mini",
                "--teacher-api-base", f"{katan.url}/v1", "--teacher-api-key", "sk-t",
                "--student-api-base", f"{student.url}/v1"))
            started.append(gateways[-1])
        prometheus = start_prometheus(folder, gateways)
        started.append(prometheus)
        yield Stack(gateway=gateways[0], shadowing=gateways[1], prometheus=prometheus, store=store)
    finally:
        for server in reversed(started):
            stop(server.proc)


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> float:
    """Known traffic through the two replicas; returns the savings it should show: the student's answers at
    the teacher's price minus at the student's, less the shadow calls and the fallbacks' rejected attempts.
    (A shadow call costs a whole teacher answer: with every answer shadowed, savings are negative.)"""
    expected = 0.0
    for i in range(SERVED_REQUESTS):
        response = ask(stack.shadowing if i < SHADOWED else stack.gateway, SERVED, f"served-{i}")
        assert response.headers["x-protege-route"] == "student"
        usage = response.json()["usage"]
        expected += (usage["prompt_tokens"] * (TEACHER_PRICE[0] - STUDENT_PRICE[0])
                     + usage["completion_tokens"] * (TEACHER_PRICE[1] - STUDENT_PRICE[1]))
    for i in range(3):
        assert ask(stack.gateway, PICKY, f"picky-{i}").headers["x-protege-route"] == "fallback"
    plain = [ask(stack.gateway, PLAIN, f"plain-{i}") for i in range(4)]
    assert all(r.headers["x-protege-route"] == "teacher" for r in plain)
    # feedback from the app: one recorded (it waits for its exchange to be written), one on an unknown request
    for request_id, status in ((plain[0].headers["x-request-id"], 200), ("req_unknown", 404)):
        given = httpx.post(f"{stack.gateway.url}/v1/feedback", json={"request_id": request_id, "rating": 0},
                           timeout=30)
        assert given.status_code == status, given.text
    shadows = wait_rows(stack.store, "shadow", SHADOWED)
    fallbacks = wait_rows(stack.store, "fallback", 3)
    assert all(row.cost_usd is not None for row in shadows)  # every shadowed answer is priced
    expected -= sum(row.cost_usd or 0.0 for row in shadows)
    expected -= sum(row.extra.student.cost_usd or 0.0 for row in fallbacks if row.extra.student)
    assert all(row.extra.student and row.extra.student.cost_usd for row in fallbacks)
    assert expected > 0
    return float(expected)


def test_every_metric_the_dashboard_and_rules_use_is_exported(stack: Stack, traffic: float) -> None:
    exported = exported_names(httpx.get(f"{stack.shadowing.url}/metrics",
                                        headers={"authorization": f"Bearer {stack.shadowing.admin_token}"}).text)
    for name, expr in [*dashboard_queries(), *rule_queries()]:
        missing = set(METRIC_NAME.findall(expr)) - exported
        assert not missing, f"{name}: {missing} not on /metrics"


def test_prometheus_evaluates_every_query_and_the_savings(stack: Stack, traffic: float) -> None:
    # the counters are exact: wait until a scrape after the traffic (and the shadow calls) is in
    deadline = time.monotonic() + 20
    while (savings := stack.value(SAVINGS)) != pytest.approx(traffic, rel=1e-9) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert savings == pytest.approx(traffic, rel=1e-9)
    time.sleep(2)  # two more scrapes and rule evaluations, so every rate() has samples after the last request

    for title, expr in dashboard_queries():
        assert stack.query(expr), f"{title}: {expr} returned nothing"
    for _, expr in rule_queries():
        stack.query(expr)  # evaluates without error
    # recorded by Prometheus' rule manager itself, and every rule healthy
    assert stack.value("sum(task:protege_savings_usd:total)") == pytest.approx(traffic, rel=1e-9)
    groups = httpx.get(f"{stack.prometheus.url}/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(rule_queries())
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]

    # the panels show what was sent
    mix = {r["metric"]["route"]: float(r["value"][1]) for r in stack.query(
        'sum by (route) (protege_requests_total{route!="shadow"})')}
    assert mix == {"student": SERVED_REQUESTS, "fallback": 3, "teacher": 4}
    reasons = stack.query("sum by (reason) (protege_fallbacks_total)")
    assert [(r["metric"]["reason"], float(r["value"][1])) for r in reasons] == [("low_confidence", 3)]
    parity = stack.query("task_version:protege_live_parity:ratio30m")
    assert [(r["metric"]["task"], r["metric"]["version"]) for r in parity] == [(SERVED, "1")]
    assert stack.query("ALERTS{alertname=~'ProtegeCaptureDropping|ProtegeTeacherErrorRate'}") == []
