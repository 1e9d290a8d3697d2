"""The Fireworks AI backend against the local fake of its API (`tests/distiller/fake_fireworks_ft.py`): the
datasets it creates and waits for, the LoRA job it asks for, progress, loading the trained LoRA onto serverless
before the job counts as done (found again by a fresh trainer), cancel, and the service's refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from distiller.trainers import Trainer, TrainerError, TrainingJob, get_trainer
from tests.distiller.fake_fireworks_ft import start_fake_fireworks
from tests.distiller.test_trainers_local import wait_done, write_chat_dataset
from tests.servers import Server, stop

KEY = "fw-fake-fireworks-0123456789"
KEY_ENV = "PROTEGE_TEST_FIREWORKS_KEY"
ACCOUNT = "acme"
BASE = "accounts/fireworks/models/llama-v3p2-3b-instruct"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_fake_fireworks(tmp_path_factory.mktemp("fake-fireworks"), KEY, ACCOUNT, run_s=0.6)
    yield server
    stop(server.proc)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.delenv("FIREWORKS_ACCOUNT_ID", raising=False)


def config(service: Server, **overrides: object) -> dict[str, object]:
    return {"base_url": service.url, "inference_url": f"{service.url}/inference/v1", "api_key_env": KEY_ENV,
            "account_id": ACCOUNT, "model": BASE, "epochs": 2, "r": 8, "learning_rate": 2e-4, "suffix": "spell",
            **overrides}


def trainer(service: Server, **overrides: object) -> Trainer:
    return get_trainer("fireworks", config(service, **overrides))


def chat(service: Server, model: str) -> httpx.Response:
    return httpx.post(f"{service.url}/inference/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hello"}]})


def test_a_lora_job_from_ready_datasets_to_a_model_deployed_on_serverless(service: Server, tmp_path: Path) -> None:
    write_chat_dataset(tmp_path / "dataset")
    job = trainer(service).launch(tmp_path / "dataset", tmp_path / "run")
    sent = (tmp_path / "run" / "upload" / "train.jsonl").read_text().splitlines()
    assert sent and all(set(json.loads(line)) == {"messages"} for line in sent)  # curation metadata removed
    [body] = [b for b in httpx.get(f"{service.url}/fake/received").json()
              if b["dataset"] == f"accounts/{ACCOUNT}/datasets/{job.details['dataset']}"]
    # the job was created only once the service had validated both uploads (the fake refuses it before)
    assert body["baseModel"] == BASE and body["epochs"] == 2 and body["loraRank"] == 8
    assert body["learningRate"] == 2e-4 and body["evaluationDataset"].endswith("-validation")
    assert body["outputModel"].startswith(f"accounts/{ACCOUNT}/models/spell-")
    # the model answers at the inference endpoint, where the distiller evaluates it
    assert job.details["base_url"] == f"{service.url}/inference/v1"
    assert chat(service, body["outputModel"]).status_code == 404  # not deployed yet
    seen = wait_done(job, config(service), timeout=30)  # a fresh trainer and a JSON round-tripped handle per poll
    states = [s.state for s in seen]
    assert states[-1] == "succeeded" and "running" in states and any(0 < s.progress < 1 for s in seen)
    # trained, then loaded onto serverless: "running" until the deployed model answers
    assert any(s.message.startswith("trained; loading onto serverless") for s in seen)
    status = seen[-1]
    assert status.result is not None and status.result.model_name == body["outputModel"]
    assert status.result.base_model == BASE and status.details["deployment_state"] == "DEPLOYED"
    assert chat(service, status.result.model_name).status_code == 200
    deployed = httpx.get(f"{service.url}/v1/accounts/{ACCOUNT}/deployedModels",
                         headers={"authorization": f"Bearer {KEY}"}).json()["deployedModels"]
    assert [d["model"] for d in deployed].count(body["outputModel"]) == 1  # polled many times, loaded once
    assert KEY not in (tmp_path / "run" / "job.json").read_text()


def test_without_deploy_the_job_is_done_when_training_is(service: Server, tmp_path: Path) -> None:
    write_chat_dataset(tmp_path / "dataset")
    job = trainer(service, deploy="none").launch(tmp_path / "dataset", tmp_path / "run")
    status = wait_done(job, config(service, deploy="none"), timeout=30)[-1]
    assert status.state == "succeeded" and status.result is not None
    assert chat(service, status.result.model_name).status_code == 404  # yours to deploy


def test_cancel_and_the_services_refusals(service: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_chat_dataset(tmp_path / "dataset")
    backend = trainer(service)
    job = backend.launch(tmp_path / "dataset", tmp_path / "run")
    backend.cancel(job)
    assert backend.poll(TrainingJob.from_dict(job.to_dict())).state == "cancelled"
    backend.cancel(job)  # already over: nothing to do
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(json.dumps({"messages": [{"role": "robot", "content": "beep"}]}) + "\n")
    with pytest.raises(TrainerError, match=r"400 invalid dataset file: line 1 has a message with an unknown role"):
        backend.launch(bad, tmp_path / "bad-run")
    with pytest.raises(TrainerError, match="404 account not found"):
        trainer(service, account_id="someone-else").launch(tmp_path / "dataset", tmp_path / "other-run")
    with pytest.raises(TrainerError, match=r"no Fireworks account: set account_id \(--account-id\)"):
        trainer(service, account_id=None).launch(tmp_path / "dataset", tmp_path / "no-account")
    with pytest.raises(ValueError, match="suffix must be 1-40 lowercase"):
        trainer(service, suffix="Not An Id")
    monkeypatch.setenv(KEY_ENV, "fw-wrong")
    with pytest.raises(TrainerError, match="401 invalid API key"):
        backend.poll(job)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(TrainerError, match=f"no API key: set \\${KEY_ENV}"):
        backend.poll(job)
