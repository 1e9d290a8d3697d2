"""In-process unit tests: incremental detokenisation, stop strings, request parsing, the engine itself."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.errors import BadRequestError
from model_server.detokenize import TextState, TokenTable
from model_server.engine import Engine, Sequence, Update
from model_server.protocol import ChatCompletionRequest, parse_body
from model_server.sampling import SamplingParams
from tests.servers import REPO


def _decoder(tokenizer: Any) -> Any:
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _stream(tokenizer: Any, text: str, stops: list[str]) -> tuple[list[str], TextState]:
    state = TextState(_decoder(tokenizer), stops)
    deltas = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        delta, _ = state.push(token)
        deltas.append(delta)
        if state.stopped:
            return deltas, state
    deltas.append(state.finish()[0])
    return deltas, state


def test_multibyte_characters_are_never_split(smollm2_tokenizer: Any) -> None:
    text = "héllo 世界 🙂 done"
    deltas, _ = _stream(smollm2_tokenizer, text, [])
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_is_cut_and_never_leaks(smollm2_tokenizer: Any) -> None:
    deltas, state = _stream(smollm2_tokenizer, "one two three STOP four five", ["STOP", "zzz"])
    assert state.stopped
    assert "".join(deltas) == "one two three "
    assert not any("ST" in d for d in deltas)


def test_partial_stop_prefix_is_released_when_it_does_not_complete(smollm2_tokenizer: Any) -> None:
    deltas, state = _stream(smollm2_tokenizer, "a STOX b", ["STOP"])
    assert not state.stopped
    assert "".join(deltas) == "a STOX b"


def test_logprob_entries_follow_their_text(smollm2_tokenizer: Any) -> None:
    state = TextState(_decoder(smollm2_tokenizer), ["hree"])
    released: list[Any] = []
    # tokens: "one", " two", " three", " four"; the text ends up as "one two t", so the entry of the
    # token that straddles the cut (" three") is kept and the one after it is not
    for token in smollm2_tokenizer.encode("one two three four five", add_special_tokens=False):
        _, entries = state.push(token, entry=token)
        released.extend(entries)
        if state.stopped:
            break
    assert smollm2_tokenizer.decode(released) == "one two three"
    assert state.emitted == "one two t"


def test_token_table_bytes(smollm2_tokenizer: Any) -> None:
    table = TokenTable(smollm2_tokenizer, _decoder(smollm2_tokenizer))
    ids = smollm2_tokenizer.encode("héllo 世界", add_special_tokens=False)
    assert bytes(b for i in ids for b in table.lookup(i)[1]).decode() == "héllo 世界"
    assert table.lookup(ids[0])[0] == "h"


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"messages": [{"role": "user", "content": [{"type": "text"}, 3]}]}', "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stop": [1]}', "stop"),
    (b'{"messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
])
def test_validation_errors_name_the_field(raw: bytes, param: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_body(raw, ChatCompletionRequest)
    assert caught.value.param == param


def test_engine_cancel_and_limits(tiny_loaded: Any) -> None:
    engine = Engine(tiny_loaded, max_batch=2, threads=torch.get_num_threads())
    engine.start()
    try:
        updates: dict[int, list[Update]] = {0: [], 1: [], 2: []}
        done = threading.Event()

        def collect(index: int) -> Any:
            def callback(update: Update) -> None:
                updates[index].append(update)
                if all(u and u[-1].finish_reason for u in updates.values()):
                    done.set()
            return callback

        prompt = engine.encode_chat([{"role": "user", "content": "hi"}])
        long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
        seqs = [Sequence(prompt, long, collect(0)),
                Sequence(prompt, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True), collect(1)),
                Sequence(prompt, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True), collect(2))]
        for seq in seqs:
            engine.submit(seq)
        while not updates[0]:
            threading.Event().wait(0.001)
        engine.cancel(seqs[0].id)
        assert done.wait(30)
        assert updates[0][-1].finish_reason == "cancelled"
        assert updates[0][-1].completion_tokens < 400
        assert [updates[i][-1].finish_reason for i in (1, 2)] == ["length", "length"]
        assert [updates[i][-1].completion_tokens for i in (1, 2)] == [5, 3]
        assert engine.stats()["peak_batch"] == 2  # max_batch: the third waited for a free slot
    finally:
        engine.stop()


def test_cache_build_is_atomic_under_a_race(tmp_path: Path, tiny_model_dir: Path, monkeypatch: Any) -> None:
    """Two builders racing for the same cache folder: both succeed, one copy wins, no temp folder is left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from model_server import model_loading

    loading = threading.Lock()  # transformers' loading is not thread-safe; the writes and renames still race
    both_building = threading.Barrier(2, timeout=60)

    class FakeAuto:  # the tiny model stands in for the GGUF dequantisation
        def __init__(self, real: Any, barrier: threading.Barrier | None = None) -> None:
            self.real, self.barrier = real, barrier

        def from_pretrained(self, *_: Any, **__: Any) -> Any:
            if self.barrier is not None:
                self.barrier.wait()
            with loading:
                return self.real.from_pretrained(str(tiny_model_dir), local_files_only=True)

    monkeypatch.setattr(model_loading, "AutoModelForCausalLM", FakeAuto(AutoModelForCausalLM, both_building))
    monkeypatch.setattr(model_loading, "AutoTokenizer", FakeAuto(AutoTokenizer))
    cache = tmp_path / "cache" / "smollm2"
    errors: list[BaseException] = []

    def build() -> None:
        try:
            model_loading.ensure_smollm2_cache(cache)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [], [repr(e) for e in errors]
    assert sorted(p.name for p in cache.parent.iterdir()) == ["smollm2"]
    assert (cache / "protege-cache.json").is_file() and (cache / "model.safetensors").is_file()
    monkeypatch.undo()
    loaded = model_loading.load_model_dir(cache)
    assert loaded.model.config.hidden_size == 64


def test_bad_model_path_exits_with_a_message(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "model_server.server", "--model", str(tmp_path / "nope"),
                           "--port", "0"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert "is not a transformers model folder" in proc.stderr
