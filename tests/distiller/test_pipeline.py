"""`protege distill` after a crash: a distiller killed while its LoRA job trains leaves the detached job going,
with its handle in the run folder; the next `distill` of the task polls that job instead of training again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distiller.trainers import LocalLoRATrainer, TrainingJob
from distiller.trainers.local import process_alive
from gateway.store import open_store
from tests.distiller.conftest import make_exchange
from tests.distiller.test_distill_e2e import SMALL_DATA
from tests.servers import start_model_server, stop

TASK = "resume"
STEPS = 20  # a few seconds of tiny-model training: the distiller is killed after the first


async def capture(store_path: Path, count: int) -> None:
    store = open_store(f"sqlite:///{store_path}")
    await store.open()
    try:
        await store.insert_exchanges([make_exchange(i, task=TASK) for i in range(count)])
    finally:
        await store.close()


def wait_for_training(runs: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> Path:
    """The run folder once its job has made an optimizer step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the distiller exited before training"
        for status in runs.glob(f"{TASK}/*/training/status.json"):
            data = json.loads(status.read_text())
            if data["state"] == "running" and data.get("step", 0) >= 1:
                return status.parents[1]
        time.sleep(0.05)
    raise TimeoutError("training never started")


def test_a_restarted_distiller_polls_the_job_it_left_running(tiny_model: Path, tmp_path: Path) -> None:
    store, runs = tmp_path / "store.db", tmp_path / "runs"
    asyncio.run(capture(store, 40))
    # evaluation through a server of our own: a random model never stops, so its answers are cut at 8 tokens
    server = start_model_server(tmp_path, "--model", str(tiny_model), "--served-model-name", "tiny", "--threads",
                                "1", "--max-new-tokens", "8")
    cmd = [sys.executable, "-m", "protege", "distill", "--task", TASK, "--store", f"sqlite:///{store}",
           "--runs-dir", str(runs), "--base-model", str(tiny_model), "--epochs", "1000", "--max-steps", str(STEPS),
           "--student-api-base", f"{server.url}/v1", "--json", *SMALL_DATA]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the trainer's torch threads (the cores are shared)
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    job: TrainingJob | None = None
    try:
        run_dir = wait_for_training(runs, first)
        first.kill()  # the distiller dies; its training process (own session) does not
        first.wait()
        job = TrainingJob.load(run_dir / "training")
        assert json.loads((run_dir / "run.json").read_text())["version"] == 1

        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        stop(first)
        stop(server.proc)
        if job is not None and process_alive(int(job.details["pid"])):
            LocalLoRATrainer().cancel(job)
    assert f"resuming training job {job.job_id}" in second.stderr
    outcome = json.loads(second.stdout)
    assert outcome["version"] == 1 and outcome["reused"] is False and outcome["run_dir"] == str(run_dir)
    assert [p.name for p in (runs / TASK).iterdir()] == [run_dir.name]  # no second run folder, no second job
    assert TrainingJob.load(run_dir / "training") == job
    assert (run_dir / "training" / "train.log").read_text().count("saved") == 1
    report = json.loads((run_dir / "report.json").read_text())
    assert report["version"] == 1 and report["evaluation"]["student"]["score"]["n"] > 0
    assert report["evaluation"]["student"]["completion_tokens_mean"] <= 8
    listing = json.loads(subprocess.run([sys.executable, "-m", "protege", "students", "--store",
                                         f"sqlite:///{store}", "--json"], capture_output=True, text=True,
                                        check=True).stdout)
    assert [(s["version"], s["status"]) for s in listing] == [(1, outcome["status"])]
