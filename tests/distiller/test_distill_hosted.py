"""`protege distill --trainer openai`, `--trainer together` and `--trainer fireworks` end to end against local
fakes of those services' fine-tuning APIs, which also serve the tuned models: flags derived from the backend's
config (`--epochs` reaches the service as its epochs), the distiller killed while the job runs and resumed on the
same job, the student evaluated through the service under the name it gave the model, registered with its
provider's list price and promoted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from distiller.demo.workload import SYSTEM_PROMPT, build_workload
from gateway.store import Exchange, open_store
from tests.distiller.fake_fireworks_ft import start_fake_fireworks
from tests.distiller.fake_openai_ft import start_fake_openai_ft
from tests.distiller.fake_together_ft import start_fake_together
from tests.distiller.test_distill_e2e import SMALL_DATA, run_distill
from tests.servers import Server, stop

TASK = "tickets-e2e"
KEY = "sk-fake-fine-tuning-hosted-0123456789"
KEY_ENV = "PROTEGE_TEST_HOSTED_FT_KEY"
ANSWER = "Thank you, we have logged your ticket and will reply within a day."
ACCOUNT = "acme"
# the provider's list price of each base model in litellm's map, as the student is registered with it
LIST_PRICE = {"openai": "ft:gpt-4o-mini-2024-07-18", "together": "together-ai-4.1b-8b",
              "fireworks": "fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct"}


@dataclass
class Hosted:
    """One fake fine-tuning service and how `protege distill` is pointed at it."""

    backend: str
    server: Server
    model: str  # the base model to tune

    def flags(self) -> tuple[str, ...]:
        where: tuple[str, ...] = ("--base-url", f"{self.server.url}/v1")
        if self.backend == "fireworks":  # a control plane and an inference endpoint, and an account
            where = ("--base-url", self.server.url, "--inference-url", f"{self.server.url}/inference/v1",
                     "--account-id", ACCOUNT)
        return ("--trainer", self.backend, "--epochs", "3", "--model", self.model, "--suffix", "tickets", *where,
                "--api-key-env", KEY_ENV, "--promote", *SMALL_DATA)

    def epochs_received(self, job_id: str) -> object:
        """The epochs the service was asked for, as it names them (n_epochs)."""
        if self.backend == "openai":
            with openai.OpenAI(api_key=KEY, base_url=f"{self.server.url}/v1", max_retries=0) as client:
                remote = client.fine_tuning.jobs.retrieve(job_id)
            assert remote.method is not None and remote.method.supervised is not None
            assert remote.method.supervised.hyperparameters is not None
            return remote.method.supervised.hyperparameters.n_epochs
        [body] = httpx.get(f"{self.server.url}/fake/received").json()
        if self.backend == "fireworks":
            return body["epochs"]
        assert body["training_type"] == {"type": "Lora"}  # a LoRA of an open model
        return body["n_epochs"]


@pytest.fixture(scope="module", params=["openai", "together", "fireworks"])
def hosted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosted]:
    folder = tmp_path_factory.mktemp(f"fake-{request.param}")
    if request.param == "openai":
        server, model = start_fake_openai_ft(folder, KEY, run_s=4.0), "gpt-4o-mini-2024-07-18"
    elif request.param == "together":
        server, model = start_fake_together(folder, KEY, run_s=4.0), "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
    else:
        server = start_fake_fireworks(folder, KEY, ACCOUNT, run_s=4.0)
        model = "accounts/fireworks/models/llama-v3p1-8b-instruct"
    yield Hosted(request.param, server, model)
    stop(server.proc)


def captured_store(path: Path) -> Path:
    """48 support tickets the teacher answered with the same acknowledgement."""
    rows = [Exchange(request_id=f"req_{i:04d}", created_at=time.time() - 3600 + i, task=TASK, task_source="header",
                     route="teacher", model="gpt-4o-mini", upstream_model="gpt-4o-mini", status="ok",
                     http_status=200, stream=False,
                     request={"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                           {"role": "user", "content": ticket.message}]},
                     response={"choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": ANSWER}}]},
                     prompt_tokens=380, completion_tokens=14, cost_usd=6.5e-5, finish_reason="stop")
            for i, ticket in enumerate(build_workload(48, unusual_fraction=0).tickets)]

    async def write() -> None:
        store = open_store(f"sqlite:///{path}")
        await store.open()
        try:
            await store.insert_exchanges(rows)
        finally:
            await store.close()

    import asyncio

    asyncio.run(write())
    return path


def test_a_hosted_student_is_trained_resumed_evaluated_under_its_name_and_promoted(
        hosted: Hosted, tmp_path: Path) -> None:
    store = captured_store(tmp_path / "store.db")
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "protege", "distill", "--task", TASK, "--store", f"sqlite:///{store}",
            "--runs-dir", str(runs), "--json", *hosted.flags()]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, KEY_ENV: KEY})
    try:  # killed once the hosted job is launched: the job goes on at the service
        deadline = time.monotonic() + 60
        while not list(runs.glob(f"{TASK}/*/training/job.json")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.1)
        first.kill()
    finally:
        first.communicate(timeout=30)
    [job_file] = runs.glob(f"{TASK}/*/training/job.json")
    launched = json.loads(job_file.read_text())
    assert launched["backend"] == hosted.backend and launched["details"]["config"]["epochs"] == 3
    assert KEY not in job_file.read_text()  # the key stays in the environment

    outcome = run_distill(store, runs, *hosted.flags(), env={KEY_ENV: KEY})
    assert outcome["version"] == 1 and outcome["status"] == "active", outcome
    assert hosted.epochs_received(launched["job_id"]) == 3  # --epochs, as the service names it
    listing = json.loads(subprocess.run([sys.executable, "-m", "protege", "students", "--store",
                                         f"sqlite:///{store}", "--json"], capture_output=True, text=True,
                                        check=True).stdout)
    [student] = listing
    # trained by the job launched before the kill, evaluated and registered under the name the service gave it
    assert student["job"]["job_id"] == launched["job_id"]
    assert student["trainer"] == hosted.backend and student["status"] == "active"
    assert student["model"] != "tickets-e2e-v1" and student["model"] == student["artifact"]
    assert student["model"].startswith({"openai": "ft:gpt-4o-mini", "together": "protege/",
                                        "fireworks": f"accounts/{ACCOUNT}/models/tickets-"}[hosted.backend])
    # billed by the gateway at its provider's list price, as the distiller found it
    assert f"({LIST_PRICE[hosted.backend]} in litellm's bundled price map" in student["serving_price"]["source"]
    assert student["serving_price"]["input_per_token"] > 0
    evaluation = student["evaluation"]
    assert evaluation["student"]["errors"] == 0 and evaluation["student"]["score"]["mean"] == 1.0
    base = evaluation["baselines"][0]
    assert base["name"].startswith(f"base model ({hosted.model})") and base["score"]["mean"] == 0.0
    # the service's trained tokens, priced; Fireworks' job object does not count them
    assert student["costs"]["sources"]["training"].startswith(
        "not reported by the provider" if hosted.backend == "fireworks" else "billed ")


def test_a_flag_of_another_trainer_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "protege", "distill", "--task", TASK, "--store",
                          f"sqlite:///{tmp_path / 's.db'}", "--trainer", "openai", "--r", "8"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "protege distill: --r: not an option of --trainer openai (it takes" in out.stderr
    assert "Traceback" not in out.stderr
    bad = subprocess.run([sys.executable, "-m", "protege", "distill", "--task", TASK, "--store",
                          f"sqlite:///{tmp_path / 's.db'}", "--trainer", "local", "--device", "tpu"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--trainer local: device must be one of" in bad.stderr
    helped = subprocess.run([sys.executable, "-m", "protege", "distill", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert "--trainer openai:" in helped.stdout and "--learning-rate-multiplier MULTIPLIER" in helped.stdout
    assert "--epochs EPOCHS" in helped.stdout and "also --trainer openai" in helped.stdout
