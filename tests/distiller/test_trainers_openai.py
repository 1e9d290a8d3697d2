"""The OpenAI fine-tuning backend against a local server speaking OpenAI's fine-tuning API
(`tests/distiller/fake_openai_ft.py`), through the official SDK: happy path to an `ft:` id, the uploaded
files stripped of curation metadata, a bad file failing with the service's message, cancel, auth."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from distiller.trainers import OpenAIFineTuningConfig, OpenAIFineTuningTrainer, TrainerError, get_trainer
from distiller.trainers.openai_ft import upload_examples
from tests.distiller.fake_openai_ft import start_fake_openai_ft
from tests.distiller.test_trainers_local import wait_done, write_chat_dataset
from tests.servers import Server, stop

KEY = "sk-fake-fine-tuning-0123456789"
KEY_ENV = "PROTEGE_TEST_FT_KEY"
MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_fake_openai_ft(tmp_path_factory.mktemp("fake-ft"), KEY)
    yield server
    stop(server.proc)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dataset")
    write_chat_dataset(path)
    return path


def _config(service: Server, **overrides: object) -> OpenAIFineTuningConfig:
    values: dict[str, object] = {"model": MODEL, "epochs": 2, "suffix": "spell", "base_url": f"{service.url}/v1",
                                 "api_key_env": KEY_ENV, **overrides}
    return OpenAIFineTuningConfig.from_dict(values)


@pytest.fixture
def client(service: Server) -> Iterator[openai.OpenAI]:
    """The SDK pointed at the fake service, to look at what the trainer did."""
    with openai.OpenAI(api_key=KEY, base_url=f"{service.url}/v1", max_retries=0) as sdk:
        yield sdk


def test_config() -> None:
    help_text = OpenAIFineTuningConfig.help()
    assert set(help_text) == set(OpenAIFineTuningConfig.__dataclass_fields__) and all(help_text.values())
    assert OpenAIFineTuningConfig(epochs=3).hyperparameters() == {"n_epochs": 3}
    with pytest.raises(ValueError, match="suffix"):
        OpenAIFineTuningConfig(suffix="x" * 65)
    with pytest.raises(ValueError, match="unknown"):
        OpenAIFineTuningConfig.from_dict({"r": 2})  # a LoRA rank: not something this service takes
    # the service's own name, as configs spelled it before the flag was shared with the other trainers
    assert OpenAIFineTuningConfig.from_dict({"n_epochs": 2}) == OpenAIFineTuningConfig(epochs=2)


def test_upload_examples_are_pure_chat_examples(tmp_path: Path) -> None:
    line = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello", "refusal": None, "annotations": []}],
            "tools": [{"type": "function", "function": {"name": "f"}}], "metadata": {"request_id": "r1"}}
    (tmp_path / "train.jsonl").write_text(json.dumps(line) + "\n")
    assert upload_examples(tmp_path / "train.jsonl") == [{
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "tools": [{"type": "function", "function": {"name": "f"}}]}]


def test_fine_tuning_happy_path(service: Server, client: openai.OpenAI, dataset_dir: Path, tmp_path: Path) -> None:
    config = _config(service)
    job = get_trainer("openai", config.to_dict()).launch(dataset_dir, tmp_path / "run")
    assert job.backend == "openai" and job.job_id.startswith("ftjob-")
    seen = wait_done(job, config.to_dict(), timeout=30)  # a fresh trainer and a JSON round-tripped handle per poll
    final = seen[-1]
    assert final.state == "succeeded", final
    assert {"queued", "running"} <= {status.state for status in seen}
    progress = [status.progress for status in seen]
    assert progress == sorted(progress) and any(0 < p < 1 for p in progress) and progress[-1] == 1.0
    assert final.result is not None
    assert final.result.artifact.startswith(f"ft:{MODEL}:protege:spell:") and final.result.model_name == (
        final.result.artifact)
    assert final.result.base_model == MODEL and final.result.metrics["trained_tokens"] > 0

    remote = client.fine_tuning.jobs.retrieve(job.job_id)
    assert remote.method is not None and remote.method.supervised is not None
    assert remote.method.supervised.hyperparameters is not None
    assert remote.method.supervised.hyperparameters.n_epochs == 2
    assert getattr(remote, "user_provided_suffix", None) == "spell"
    for split, file_id in (("train", job.details["training_file"]), ("validation", job.details["validation_file"])):
        sent = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
        written = [json.loads(line) for line in (dataset_dir / f"{split}.jsonl").read_text().splitlines()]
        assert all("metadata" in line for line in written)
        assert sent == [{k: v for k, v in line.items() if k != "metadata"} for line in written]
        assert (tmp_path / "run" / "upload" / f"{split}.jsonl").read_text().count("\n") == len(sent)


def test_service_rejects_metadata(client: openai.OpenAI, dataset_dir: Path) -> None:
    """Why the trainer strips `metadata`: the service fails a job whose file has unknown keys."""
    with (dataset_dir / "train.jsonl").open("rb") as raw:
        uploaded = client.files.create(file=raw, purpose="fine-tune")
    remote = client.fine_tuning.jobs.create(model=MODEL, training_file=uploaded.id)
    deadline = time.monotonic() + 10
    while remote.status not in ("failed", "succeeded") and time.monotonic() < deadline:
        time.sleep(0.05)
        remote = client.fine_tuning.jobs.retrieve(remote.id)
    assert remote.status == "failed" and remote.error is not None
    assert remote.error.code == "invalid_training_file" and "'metadata'" in remote.error.message


def test_bad_file_is_reported_failed_with_the_service_message(service: Server, tmp_path: Path) -> None:
    dataset = tmp_path / "bad"
    dataset.mkdir()
    lines: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
         "metadata": {"request_id": f"r{i}"}} for i in range(12)]
    lines[4]["messages"][0]["role"] = "wizard"
    (dataset / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = _config(service)
    job = OpenAIFineTuningTrainer(config).launch(dataset, tmp_path / "run")
    assert job.details["validation_file"] is None
    final = wait_done(job, config, timeout=30)[-1]
    assert final.state == "failed" and final.result is None and final.error is not None
    assert final.error.startswith("invalid_training_file:") and "Line 5, message 0: unrecognized role 'wizard'" in (
        final.error)
    assert "wizard" in final.message


def test_cancel(service: Server, dataset_dir: Path, tmp_path: Path) -> None:
    trainer = OpenAIFineTuningTrainer(_config(service))
    job = trainer.launch(dataset_dir, tmp_path / "run")
    trainer.cancel(job)
    status = trainer.poll(job)
    assert status.state == "cancelled" and status.result is None and "cancelled" in status.message
    trainer.cancel(job)  # already cancelled: the service answers 400, the trainer shrugs


def test_launch_errors(service: Server, dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TrainerError, match="no examples"):
        OpenAIFineTuningTrainer(_config(service)).launch(tmp_path / "empty", tmp_path / "run")
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with pytest.raises(TrainerError, match="Incorrect API key"):
        OpenAIFineTuningTrainer(_config(service, max_retries=0)).launch(dataset_dir, tmp_path / "run")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(TrainerError, match=f"set \\${KEY_ENV}"):
        OpenAIFineTuningTrainer(_config(service)).launch(dataset_dir, tmp_path / "run")
