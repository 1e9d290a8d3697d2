"""Curation end to end: drop reasons add up, splits are stable, prompts are distilled, PII never reaches a file."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from distiller.dataset import (
    DROP_REASONS,
    CurationConfig,
    curate,
    curate_task,
    load_task_exchanges,
    split_key,
    split_of,
    token_stats,
    write_dataset,
)
from gateway.store import Exchange, open_store, user_hash
from gateway.tasks import text_hash
from tests.distiller.conftest import make_exchange

CALL = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"order": "A-1"}'}}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
PROMPT = "You are a support agent for ACME. Answer briefly."


def synthetic(n: int, start: int = 0) -> list[Exchange]:
    return [make_exchange(i, f"Where is my order {i}? It was due on day {i % 30}.", f"Order {i} ships tomorrow.",
                          system=PROMPT) for i in range(start, start + n)]


def splits_by_id(exchanges: list[Exchange], config: CurationConfig | None = None) -> dict[str, str]:
    dataset = curate(exchanges, config)
    return {e.request_id: e.split for name in ("train", "validation", "test") for e in dataset.split(name)}


def test_report_counts_add_up_and_name_each_reason() -> None:
    long_question = " ".join(f"word{i}" for i in range(3000))
    near = " ".join(f"token{i}" for i in range(80))
    exchanges = [
        *synthetic(10),
        make_exchange(100, status="failed"),
        make_exchange(101, status="incomplete"),
        make_exchange(102, finish_reason="length"),
        make_exchange(103, answer=""),
        make_exchange(104, answer="I'm sorry, but I cannot help with that."),
        make_exchange(105, long_question),
        make_exchange(106, "Where is my order 3? It was due on day 3.", "Order 3 ships tomorrow.", system=PROMPT),
        make_exchange(107, near, "same"),
        make_exchange(108, near.replace("token79", "token_x"), "same"),
        make_exchange(109, "tool please", tool_calls=CALL, tools=TOOLS),
    ]
    dataset = curate(exchanges, CurationConfig(max_tokens=2000, prompt_distillation="off"))
    report = dataset.report
    assert report["input"] == len(exchanges) == report["kept"] + report["dropped_total"]
    assert sum(report["dropped"].values()) == report["dropped_total"] == len(dataset.dropped)
    assert sum(report["splits"].values()) == report["kept"] == sum(dataset.counts.values())
    assert sum(report["languages"].values()) == report["kept"]
    expected = {"failed": 1, "incomplete": 1, "truncated": 1, "empty_answer": 1, "refusal": 1, "too_long": 1,
                "duplicate": 1, "near_duplicate": 1}
    assert report["dropped"] == {reason: expected.get(reason, 0) for reason in DROP_REASONS}
    assert dict(dataset.dropped)["req_00106"] == "duplicate"  # the newer copy goes
    assert report["kept"] == 12 and report["tasks"] == ["t"]
    assert set(report["tokens"]) == {"counter", "total", "mean", "p50", "p95", "max"}
    tool_example = next(e for name in ("train", "validation", "test") for e in dataset.split(name)
                        if e.request_id == "req_00109")
    assert tool_example.example()["tools"] == TOOLS
    assert tool_example.messages[-1] == {"role": "assistant", "tool_calls": CALL}


def test_token_stats() -> None:
    assert token_stats([]) == {"total": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    assert token_stats(list(range(1, 101))) == {"total": 5050, "mean": 50.5, "p50": 50, "p95": 95, "max": 100}


def test_a_tokenizer_count_replaces_the_estimate() -> None:
    exchanges = [make_exchange(1, "one two three", "four"), make_exchange(2, "x " * 50, "y")]
    dataset = curate(exchanges, CurationConfig(max_tokens=10), count_tokens=lambda text: len(text.split()))
    assert [e.tokens for e in dataset.train + dataset.validation + dataset.test] == [4]
    assert dataset.report["dropped"]["too_long"] == 1 and dataset.report["tokens"]["counter"] == "tokenizer"


# ------------------------------------------------------------------------------------------------- splits


def test_split_proportions_on_a_thousand_examples() -> None:
    dataset = curate(synthetic(1000))
    assert dataset.report["kept"] == 1000
    counts = dataset.counts
    assert abs(counts["test"] - 100) <= 30 and abs(counts["validation"] - 100) <= 30
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(1000):
        counts[split_of([{"role": "user", "content": f"synthetic request {i}"}], validation_fraction=0.05,
                        test_fraction=0.15)] += 1
    assert abs(counts["test"] - 150) <= 35 and abs(counts["validation"] - 50) <= 25


def test_splits_are_stable_across_runs_and_other_examples() -> None:
    exchanges = synthetic(300)
    first = splits_by_id(exchanges)
    assert splits_by_id(exchanges) == first
    assert splits_by_id(list(reversed(exchanges))) == first
    subset = random.Random(5).sample(exchanges, 120)
    assert splits_by_id(subset) == {rid: first[rid] for rid in splits_by_id(subset)}
    grown = splits_by_id(exchanges + synthetic(100, start=1000))
    assert {rid: grown[rid] for rid in first} == first
    assert set(first.values()) == {"train", "validation", "test"}


def test_split_depends_on_the_user_messages_only() -> None:
    question = [{"role": "user", "content": "Where is   my ORDER 12?"}]
    assert split_key(question) == split_key([{"role": "system", "content": "other prompt"},
                                             {"role": "user", "content": "where is my order 12?"},
                                             {"role": "assistant", "content": "any answer"}])
    assert split_key(question) != split_key(question, seed=1)
    # the same question with different answers always shares a split: nothing in test is also in train
    exchanges = [make_exchange(i, f"question {i % 40}", f"answer variant {i}") for i in range(400)]
    dataset = curate(exchanges, CurationConfig(near_dup_threshold=None))
    keys = {name: {split_key(e.messages) for e in dataset.split(name)} for name in ("train", "validation", "test")}
    assert keys["test"] and keys["train"]
    assert not keys["test"] & keys["train"] and not keys["validation"] & keys["train"]
    assert not keys["test"] & keys["validation"]


def test_growing_validation_never_moves_test_examples() -> None:
    exchanges = synthetic(300)
    before = splits_by_id(exchanges, CurationConfig(validation_fraction=0.1))
    after = splits_by_id(exchanges, CurationConfig(validation_fraction=0.2))
    assert {k for k, v in before.items() if v == "test"} == {k for k, v in after.items() if v == "test"}


# ------------------------------------------------------------------------------------------------- prompts


def test_auto_distils_a_single_shared_system_prompt() -> None:
    dataset = curate(synthetic(20))
    assert dataset.system_prompt_hash == text_hash(PROMPT)
    assert all(e.messages[0]["role"] == "user" for e in dataset.train + dataset.validation + dataset.test)
    assert dataset.report["prompt_distillation"] == {"mode": "auto", "applied": True,
                                                     "system_prompt_hash": text_hash(PROMPT),
                                                     "distinct_system_prompts": 1}


def test_auto_keeps_system_prompts_when_they_differ() -> None:
    exchanges = [*synthetic(6), make_exchange(50, system="Another prompt"), make_exchange(51)]
    dataset = curate(exchanges)
    assert dataset.system_prompt_hash is None
    assert sum(e.messages[0]["role"] == "system" for e in dataset.train + dataset.validation + dataset.test) == 7
    assert dataset.report["kept"] == 8


def test_on_keeps_the_most_common_prompt_and_drops_the_others() -> None:
    exchanges = [*synthetic(6), make_exchange(50, system="Another prompt"), make_exchange(51)]
    dataset = curate(exchanges, CurationConfig(prompt_distillation="on"))
    assert dataset.system_prompt_hash == text_hash(PROMPT)
    assert dataset.report["dropped"]["other_system_prompt"] == 2 and dataset.report["kept"] == 6
    assert all(m["role"] != "system" for e in dataset.train + dataset.validation + dataset.test for m in e.messages)


def test_off_keeps_the_system_prompt() -> None:
    dataset = curate(synthetic(5), CurationConfig(prompt_distillation="off"))
    assert dataset.system_prompt_hash is None
    assert all(e.messages[0] == {"role": "system", "content": PROMPT}
               for e in dataset.train + dataset.validation + dataset.test)


def test_leading_system_and_developer_messages_are_distilled_together() -> None:
    messages = [{"role": "system", "content": "A"}, {"role": "developer", "content": "B"},
                {"role": "user", "content": "hi"}]
    dataset = curate([make_exchange(1, messages=messages)])
    assert dataset.system_prompt_hash == text_hash("A\nB")
    assert [m["role"] for m in (dataset.train + dataset.validation + dataset.test)[0].messages] == ["user", "assistant"]
    assert curate([make_exchange(1)]).system_prompt_hash is None  # nothing to distil


# ------------------------------------------------------------------------------------------------- PII


PII_STRINGS = ["jane.doe@example.com", "+90 532 123 45 67", "4111 1111 1111 1111", "5555555555554444",
               "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "192.168.44.12", "2001:db8::42",
               "(415) 555-2671"]


def pii_exchanges() -> list[Exchange]:
    out = []
    for i, secret in enumerate(PII_STRINGS):
        out.append(make_exchange(i, f"Customer {i} wrote: my details are {secret}, please update.",
                                 f"Updated record {i} with {secret}.", system=f"Agent line (415) 555-2671 #{i}"))
    out.append(make_exchange(50, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Card on file: 4111-1111-1111-1111"}]}], answer=None, tool_calls=[
        {"id": "c", "type": "function", "function": {"name": "charge", "arguments": json.dumps(
            {"card": "4111-1111-1111-1111", "email": "jane.doe@example.com"})}}]))
    return out


def test_pii_never_reaches_the_written_files(tmp_path: Path) -> None:
    dataset = curate(pii_exchanges(), CurationConfig(prompt_distillation="off", validation_fraction=0.3,
                                                    test_fraction=0.3))
    assert dataset.report["kept"] == len(PII_STRINGS) + 1
    assert dataset.report["pii"]["redacted"]["phone"] >= len(PII_STRINGS)
    write_dataset(dataset, tmp_path)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["manifest.json", "report.json", "test.jsonl", "train.jsonl",
                                       "validation.jsonl"]
    written = "".join(f.read_text(encoding="utf-8") for f in files)
    for secret in [*PII_STRINGS, "4111-1111-1111-1111", "4111111111111111", "DE89370400440532013000"]:
        assert secret not in written
    for placeholder in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[IP]"):
        assert placeholder in written


def test_pii_drop_and_off_modes() -> None:
    clean = [make_exchange(100, "nothing personal here", "fine")]
    dropped = curate(pii_exchanges() + clean, CurationConfig(pii_mode="drop"))
    assert dropped.report["dropped"]["pii"] == len(PII_STRINGS) + 1 and dropped.report["kept"] == 1
    kept = curate(pii_exchanges(), CurationConfig(pii_mode="off", prompt_distillation="off"))
    text = json.dumps([e.record() for e in kept.train + kept.validation + kept.test], ensure_ascii=False)
    assert all(secret in text for secret in PII_STRINGS)


# ------------------------------------------------------------------------------------------------- output


def test_language_detection_and_cap() -> None:
    english = [make_exchange(i, f"Where is my parcel number {i}? It is late.") for i in range(5)]
    turkish = [make_exchange(10 + i, f"Kargom {i} nerede? Çok geç kaldı ve hâlâ gelmedi.") for i in range(3)]
    assert curate(english + turkish).report["languages"] == {"en": 5, "tr": 3}
    capped = curate(english + turkish, CurationConfig(language_cap=2))
    assert capped.report["languages"] == {"en": 2, "tr": 2}
    assert capped.report["dropped"]["language_cap"] == 4
    assert {rid for rid, reason in capped.dropped} == {"req_00002", "req_00003", "req_00004", "req_00012"}
    # placeholders are not English words: a redacted Ukrainian message stays Ukrainian
    ukrainian = curate([make_exchange(1, "Мій номер +380 44 123 4567, пошта ivan@example.com")])
    assert ukrainian.report["languages"] == {"uk": 1}
    assert ukrainian.train[0].messages[0]["content"] == "Мій номер [PHONE], пошта [EMAIL]"


def test_dataset_hash_is_stable_and_tracks_data_and_config(tmp_path: Path) -> None:
    exchanges = synthetic(50)
    first = curate(exchanges)
    assert curate(list(reversed(exchanges))).dataset_hash == first.dataset_hash
    changed = synthetic(50)
    assert changed[7].response is not None
    changed[7].response["choices"][0]["message"]["content"] = "Order 7 ships next week."
    assert curate(changed).dataset_hash != first.dataset_hash
    assert curate(exchanges, CurationConfig(min_answer_chars=2)).dataset_hash != first.dataset_hash
    assert curate(exchanges[:-1]).dataset_hash != first.dataset_hash
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(first, a)
    write_dataset(curate(exchanges), b)
    assert all((a / f.name).read_bytes() == f.read_bytes() for f in b.iterdir())


def test_write_dataset_files_and_manifest(tmp_path: Path) -> None:
    dataset = curate(synthetic(40))
    manifest = write_dataset(dataset, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "report.json", "system_prompt.txt", "test.jsonl",
                                                     "train.jsonl", "validation.jsonl"]  # no temporary files left
    assert (out / "system_prompt.txt").read_text() == PROMPT  # the prompt distilled away, for the baseline
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["dataset_hash"] == dataset.dataset_hash and manifest["system_prompt_hash"] == text_hash(PROMPT)
    assert manifest["counts"] == dataset.counts and manifest["config"] == CurationConfig().to_dict()
    assert json.loads((out / "report.json").read_text()) == dataset.report
    for name in ("train", "validation", "test"):
        lines = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == dataset.counts[name] == manifest["files"][f"{name}.jsonl"]["examples"]
        for line in lines:
            assert set(line) == {"messages", "metadata"} and line["metadata"]["split"] == name
            assert line["messages"][-1]["role"] == "assistant"
    assert set(dataset.train[0].example()) == {"messages"}  # what a fine-tuning service gets


def test_config_validation_and_help() -> None:
    for bad in ({"pii_mode": "mask"}, {"prompt_distillation": "yes"}, {"near_dup_threshold": 0},
                {"validation_fraction": 0.6, "test_fraction": 0.5}, {"test_fraction": -0.1}, {"max_tokens": 0},
                {"min_answer_chars": -1}, {"language_cap": 0}, {"shingling": "sentence"}):
        with pytest.raises(ValueError):
            CurationConfig.from_dict(bad)
    with pytest.raises(ValueError, match="unknown"):
        CurationConfig.from_dict({"colour": "blue"})
    config = CurationConfig(language_cap=3, seed=9)
    assert CurationConfig.from_dict(config.to_dict()) == config
    assert set(CurationConfig.help()) == set(config.to_dict()) and all(CurationConfig.help().values())


def test_exchanges_of_forgotten_users_are_dropped_with_their_reason() -> None:
    exchanges = [dataclasses.replace(e, user=("gone" if e.request_id in ("req_00003", "req_00007") else
                                              "kept" if int(e.request_id[-1]) % 2 else None)) for e in synthetic(12)]
    dataset = curate(exchanges, forgotten={user_hash("gone"), user_hash("nobody")})
    assert dataset.report["dropped"]["forgotten_user"] == 2 == dataset.report["dropped_total"]
    assert [rid for rid, _ in dataset.dropped] == ["req_00003", "req_00007"]
    remaining = [e for e in exchanges if e.user != "gone"]
    # as if the rows had never been captured: the same examples, splits and hash
    assert dataset.dataset_hash == curate(remaining).dataset_hash
    assert curate(exchanges).report["dropped"]["forgotten_user"] == 0  # nobody forgotten: nothing dropped


async def test_curate_a_task_from_a_real_sqlite_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    await store.open()
    try:
        await store.insert_exchanges([*synthetic(12), make_exchange(40, status="failed"),
                                      make_exchange(41, "other task", task="other")])
        assert len(await load_task_exchanges(store, "t")) == 13
        dataset = await curate_task(store, "t")
    finally:
        await store.close()
    assert dataset.report["input"] == 13 and dataset.report["dropped"]["failed"] == 1
    assert dataset.report["kept"] == 12 and dataset.system_prompt_hash == text_hash(PROMPT)
    assert dataset.dataset_hash == curate(synthetic(12)).dataset_hash


def test_the_apps_stop_sequences_travel_with_each_example(tmp_path: Path) -> None:
    """Evaluation, calibration and the similarity scale ask every model the way the app asked the teacher."""
    from distiller.evaluate import load_split

    exchanges = synthetic(40)
    for i, exchange in enumerate(exchanges):
        exchange.request["stop"] = "\n" if i % 2 else ["\n\n", ""]
    write_dataset(curate(exchanges), tmp_path / "out")
    examples = [e for split in ("train", "validation", "test") for e in load_split(tmp_path / "out", split)]
    assert {tuple(e.stop or ()) for e in examples} == {("\n",), ("\n\n",)}  # a string or a list; "" is no stop
    plain = synthetic(40)
    write_dataset(curate(plain), tmp_path / "plain")
    assert all(e.stop is None for e in load_split(tmp_path / "plain", "train"))
