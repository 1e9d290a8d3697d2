"""Curation with the app's feedback (`distiller.dataset`, step 0b): an exchange rated below the task's floor is
left out, a corrected answer is trained on in place of the captured one, and the report says what feedback did."""

from __future__ import annotations

import dataclasses

from distiller.dataset import LOW_RATING, CurationConfig, curate, curate_task
from gateway.store import Feedback, open_store
from tests.distiller.conftest import make_exchange

CORRECTED = {"role": "assistant", "content": "Dear Ana, your order ships today. Kind regards, ACME"}


def fb(i: int, rating: float | None = None, correction: dict[str, object] | None = None) -> Feedback:
    return Feedback(request_id=f"req_{i:05d}", task="t", created_at=9000.0 + i, exchange_created_at=1000.0 + i,
                    source="api", rating=rating, correction=correction)


def answers(exchanges: list, config: CurationConfig | None = None,  # type: ignore[type-arg]
            feedback: tuple[Feedback, ...] = ()) -> dict[str, str]:
    dataset = curate(exchanges, config, feedback=feedback)
    return {e.request_id: str(e.messages[-1].get("content")) for name in ("train", "validation", "test")
            for e in dataset.split(name)}


def test_a_low_rating_drops_the_exchange_and_a_correction_replaces_its_answer() -> None:
    exchanges = [make_exchange(i) for i in range(6)]
    # a student's answer and a failed request are no teacher data, but a person's correction of them is
    exchanges[4] = dataclasses.replace(exchanges[4], route="student")
    exchanges[5] = make_exchange(5, status="failed")
    feedback = (fb(0, rating=0.0), fb(1, rating=1.0), fb(2, rating=0.0, correction=CORRECTED),
                fb(4, correction=CORRECTED), fb(5, correction=CORRECTED), fb(999, rating=0.0))
    dataset = curate(exchanges, feedback=feedback)
    kept = {e.request_id: e for name in ("train", "validation", "test") for e in dataset.split(name)}
    assert set(kept) == {"req_00001", "req_00002", "req_00003", "req_00004", "req_00005"}
    assert ("req_00000", LOW_RATING) in dataset.dropped and dataset.report["dropped"][LOW_RATING] == 1
    for corrected in ("req_00002", "req_00004", "req_00005"):  # rated low too, but the correction fixed it
        assert kept[corrected].messages[-1] == CORRECTED
        assert kept[corrected].messages[:-1] == exchanges[int(corrected[-1])].request["messages"]
    assert kept["req_00001"].messages[-1]["content"] == "answer number 1"
    assert dataset.report["feedback"] == {"min_rating": 0.5, "exchanges_with_feedback": 5, "rated": 3,
                                          "mean_rating": round(1 / 3, 4), "dropped_low_rating": 1, "corrected": 3,
                                          "corrected_kept": 3}
    assert dataset.report["kept"] + dataset.report["dropped_total"] == dataset.report["input"]
    # what feedback changed is part of the dataset's identity: a retrain is not skipped as "unchanged"
    assert dataset.dataset_hash != curate(exchanges).dataset_hash


def test_the_floor_is_in_the_apps_scale_and_can_be_switched_off() -> None:
    exchanges = [make_exchange(i) for i in range(4)]
    stars = (fb(0, rating=5), fb(1, rating=4), fb(2, rating=3), fb(3, rating=1))
    assert set(answers(exchanges, CurationConfig(min_rating=4), stars)) == {"req_00000", "req_00001"}
    assert len(answers(exchanges, feedback=stars)) == 4  # 0.5 drops nothing on a 1-5 scale
    off = CurationConfig(min_rating=None, use_corrections=False)
    kept = answers(exchanges, off, (fb(0, rating=0.0), fb(1, correction=CORRECTED)))
    assert len(kept) == 4 and kept["req_00001"] == "answer number 1"


async def test_curate_task_reads_the_tasks_feedback_from_the_store(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    try:
        await store.insert_exchanges([make_exchange(i) for i in range(3)] + [make_exchange(9, task="other")])
        await store.put_feedback(fb(0, rating=0.0))
        await store.put_feedback(dataclasses.replace(fb(9, rating=0.0), task="other"))
        dataset = await curate_task(store, "t")
        assert dataset.report["dropped"][LOW_RATING] == 1 and dataset.report["kept"] == 2
        assert dataset.report["feedback"]["exchanges_with_feedback"] == 1
    finally:
        await store.close()
