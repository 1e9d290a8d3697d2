"""The Together AI backend against the local fake of its API (`tests/distiller/fake_together_ft.py`): what it
uploads, the LoRA job it asks for, progress from the job's events, cancel, and the service's refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from distiller.trainers import Trainer, TrainerError, get_trainer
from tests.distiller.fake_together_ft import start_fake_together
from tests.distiller.test_trainers_local import wait_done, write_chat_dataset
from tests.servers import Server, stop

KEY = "sk-fake-together-0123456789"
KEY_ENV = "PROTEGE_TEST_TOGETHER_KEY"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_fake_together(tmp_path_factory.mktemp("fake-together"), KEY, run_s=0.6)
    yield server
    stop(server.proc)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def config(service: Server) -> dict[str, object]:
    return {"base_url": f"{service.url}/v1", "api_key_env": KEY_ENV, "epochs": 2, "r": 8, "suffix": "spell"}


def trainer(service: Server) -> Trainer:
    return get_trainer("together", config(service))


def test_a_lora_job_from_pure_chat_files_to_a_served_model(service: Server, tmp_path: Path) -> None:
    write_chat_dataset(tmp_path / "dataset")
    backend = trainer(service)
    job = backend.launch(tmp_path / "dataset", tmp_path / "run")
    sent = (tmp_path / "run" / "upload" / "train.jsonl").read_text().splitlines()
    assert sent and all(set(json.loads(line)) == {"messages"} for line in sent)  # curation metadata removed
    [body] = [b for b in httpx.get(f"{service.url}/fake/received").json() if b["training_file"] ==
              job.details["training_file"]]
    assert body["training_type"] == {"type": "Lora", "lora_r": 8, "lora_alpha": 16}
    assert body["n_epochs"] == 2 and body["suffix"] == "spell" and body["validation_file"] is not None
    seen = wait_done(job, config(service), timeout=30)  # a fresh trainer and a JSON round-tripped handle per poll
    assert [s.state for s in seen][-1] == "succeeded" and "running" in [s.state for s in seen]
    assert any(0 < s.progress < 1 for s in seen)  # progress from the job's step events
    status = seen[-1]
    assert status.state == "succeeded" and status.progress == 1.0 and status.result is not None
    assert status.result.model_name.startswith("protege/") and status.result.metrics["trained_tokens"] == 4321
    assert KEY not in (tmp_path / "run" / "job.json").read_text()


def test_cancel_and_the_services_refusals(service: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_chat_dataset(tmp_path / "dataset")
    backend = trainer(service)
    job = backend.launch(tmp_path / "dataset", tmp_path / "run")
    backend.cancel(job)
    assert backend.poll(job).state == "cancelled"
    backend.cancel(job)  # already over: nothing to do
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(json.dumps({"messages": [{"role": "robot", "content": "beep"}]}) + "\n")
    with pytest.raises(TrainerError, match=r"400 invalid fine-tuning file train\.jsonl: line 1 has a message "
                                           r"with an unknown role"):
        backend.launch(bad, tmp_path / "bad-run")
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(TrainerError, match="401 Invalid API key provided"):
        backend.poll(job)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(TrainerError, match=f"no API key: set \\${KEY_ENV}"):
        backend.poll(job)
