"""Feedback reaches the next training run: answers come through the gateway (a real upstream, llm-katan), the app
reads each answer's request id with the openai SDK's `with_raw_response` and posts feedback on two of them, and
`protege distill` (trained on a local fake of OpenAI's fine-tuning API) leaves the low-rated exchange out and
trains on the corrected answer in place of the teacher's."""

from __future__ import annotations

import json
from pathlib import Path

from tests.distiller.fake_openai_ft import start_fake_openai_ft
from tests.distiller.test_distill_e2e import SMALL_DATA, TASK, run_distill, teacher_config, tickets
from tests.inprocess import inprocess_gateway, settings_for
from tests.servers import Server, stop

KEY = "sk-fake-fine-tuning-feedback-0123456789"
KEY_ENV = "PROTEGE_TEST_FEEDBACK_FT_KEY"
CORRECTION = "Dear customer, we are sorry: a replacement ships today. Kind regards, the ACME support team"


def test_distill_leaves_out_the_low_rated_exchange_and_trains_on_the_correction(
        katan: Server, tiny_student: Server, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    with inprocess_gateway(settings_for(katan, store)) as gateway:
        client = gateway.openai()
        ids = []
        for ticket in tickets(40):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": ticket}],
                extra_headers={"X-Protege-Task": TASK})
            assert raw.parse().choices[0].message.content
            ids.append(raw.headers["x-request-id"])
        low, corrected = ids[3], ids[7]
        assert client.post("/feedback", body={"request_id": low, "rating": False, "comment": "wrong city"},
                           cast_to=object)["task"] == TASK  # type: ignore[index]
        client.post("/feedback", body={"request_id": corrected, "rating": True, "correction": CORRECTION},
                    cast_to=object)
        gateway.flush()

    service = start_fake_openai_ft(tmp_path, KEY, run_s=0.5)
    try:
        # the teacher, for the similarity scale; a model server's embeddings (a hosted student has none)
        config = teacher_config(tmp_path / "protege.yaml", katan, embeddings=tiny_student)
        outcome = run_distill(store, tmp_path / "runs", "--config", str(config), "--trainer", "openai",
                              "--model", "gpt-4o-mini-2024-07-18",
                              "--base-url", f"{service.url}/v1", "--api-key-env", KEY_ENV, *SMALL_DATA,
                              env={KEY_ENV: KEY})
    finally:
        stop(service.proc)
    dataset = Path(str(outcome["run_dir"])) / "dataset"
    lines = {}
    for split in ("train", "validation", "test"):
        for line in (dataset / f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            lines[record["metadata"]["request_id"]] = record
    assert low not in lines and len(lines) == 39
    assert lines[corrected]["messages"][-1] == {"role": "assistant", "content": CORRECTION}
    assert all(r["messages"][-1]["content"] != CORRECTION for rid, r in lines.items() if rid != corrected)
    report = json.loads((dataset / "report.json").read_text())
    assert report["dropped"]["low_rating"] == 1
    assert report["feedback"] == {"min_rating": 0.5, "exchanges_with_feedback": 2, "rated": 2, "mean_rating": 0.5,
                                  "dropped_low_rating": 1, "corrected": 1, "corrected_kept": 1}
