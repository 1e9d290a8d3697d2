"""Shadow scoring with an LLM judge: a version registered with the judge scorer is compared, in the gateway, by
the judge teacher the config names (the scripted judge process, a second teacher beside llm-katan), through its
provider, and the judge's calls are counted and priced in the gateway's metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.scoring import ScorerSpec
from tests.gateway.test_cascade import ADMIN, TASK, admin, cascade_settings, chat, register
from tests.inprocess import inprocess_gateway, poll
from tests.servers import Server, start_fake_service, stop


@pytest.fixture
def judge(tmp_path: Path) -> Iterator[Server]:
    server = start_fake_service("tests.gateway.scoring.judge_server", tmp_path, "--rule", "quality", what="judge")
    yield server
    stop(server.proc)


def test_shadow_comparisons_are_judged_by_the_configured_judge(katan: Server, tiny_student: Server,
                                                                judge: Server, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    register(store, scorer=ScorerSpec("judge", "test", judge="judge-model").to_json())
    base = cascade_settings(katan, tiny_student, store, shadow_rate=1.0)
    teachers = [{"model": "openai/gpt-4o-mini", "api_base": f"{katan.url}/v1", "api_key": "sk-t"},
                {"model": "openai/judge-model", "api_base": f"{judge.url}/v1", "api_key": "judge-key",
                 "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}]
    settings = Settings.model_validate({**base.model_dump(exclude_unset=True), "admin_token": ADMIN,
                                        "teachers": teachers,
                                        "tasks": {TASK: {"judge": {"teacher": "judge-model"}}}})
    with inprocess_gateway(settings) as gateway:
        assert admin(gateway, "PUT", f"/tasks/{TASK}/rollout", {"percent": 100}).status_code == 200
        assert chat(gateway)[1]["x-protege-route"] == "student"
        poll(lambda: any(r.route == "shadow" for r in gateway.rows()), what="the shadow row")
        [shadow] = [r for r in gateway.rows() if r.route == "shadow"]
        # neither answer has the sign-off or a wrong fact: the scripted judge calls it a tie both ways round
        assert shadow.extra.shadow is not None and shadow.extra.shadow.agreement == 1.0
        assert shadow.upstream_model == "openai/gpt-4o-mini"  # the teacher answered; the judge only judged
        metrics = gateway.metrics_text()
    assert f'protege_judge_calls_total{{outcome="called",task="{TASK}"}} 2.0' in metrics
    cost = next(float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith(f'protege_judge_cost_usd_total{{task="{TASK}"}}'))
    assert cost > 0
    assert f'protege_live_parity{{task="{TASK}",version="1"}} 1.0' in metrics
