"""Captured exchanges → curated examples → deterministic splits → JSONL files.

`curate(exchanges, config)` is pure: the same exchanges and config give the same examples, splits,
report and dataset hash, whatever order the exchanges come in. Steps, in order (each drop is counted
under its reason in the report, so kept + dropped = input):

0. forgotten users (`protege forget`): an exchange whose `user_hash` is recorded as forgotten is dropped,
   so rows captured after the forget (in flight on another replica) never reach a dataset;
0b. feedback from the app (`gateway.feedback`): a corrected answer replaces the captured one (and the
   exchange skips the answer filters of step 1: a person wrote it), an exchange rated below `min_rating` is
   dropped;
1. quality filters on the captured exchange (`distiller.filters`): failed, incomplete, truncated,
   empty/short answer, refusal;
2. prompt distillation: decide whether the task's system prompt is dropped from training examples
   (the student learns the behaviour, the gateway then stops sending the prompt);
3. personal data: redact it or drop the example (`gateway.pii`);
4. over-long examples;
5. exact and near duplicates, oldest kept (`distiller.dedup`);
6. language detection and the optional per-language cap (`distiller.language`);
7. the split, a pure function of the example's user messages as written, i.e. after redaction
   (`split_of`), so identical training inputs never straddle splits.

`write_dataset` writes `train.jsonl`, `validation.jsonl`, `test.jsonl`, `report.json` and, last,
`manifest.json`. Each JSONL line is an OpenAI chat fine-tuning example plus a `metadata` object
(request_id, language, split); `CuratedExample.example()` is the line without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from distiller import filters
from distiller.dedup import Shingling, find_duplicates, normalise_text
from distiller.language import detect_language
from gateway.config import DEFAULT_MIN_RATING
from gateway.export import training_example
from gateway.pii import PLACEHOLDERS, message_strings, redact_messages
from gateway.store import Exchange, Feedback, Store, user_hash
from gateway.tasks import message_text, system_prompt, text_hash

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
PiiMode = Literal["redact", "drop", "off"]
PromptDistillation = Literal["auto", "on", "off"]

FORGOTTEN_USER = "forgotten_user"
LOW_RATING = "low_rating"
OTHER_SYSTEM_PROMPT = "other_system_prompt"
LANGUAGE_CAP = "language_cap"
DROP_REASONS: tuple[str, ...] = (
    FORGOTTEN_USER, LOW_RATING, filters.FAILED, filters.INCOMPLETE, filters.TRUNCATED, filters.EMPTY_ANSWER,
    filters.SHORT_ANSWER, filters.REFUSAL, OTHER_SYSTEM_PROMPT, filters.PII, filters.TOO_LONG, "duplicate",
    "near_duplicate", LANGUAGE_CAP)
FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
FORMAT = "protege-dataset/1"
SYSTEM_PROMPT_FILE = "system_prompt.txt"  # the prompt distilled away, for the base model asked with it
_SYSTEM_ROLES = ("system", "developer")
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True, slots=True)
class CurationConfig:
    """How captured traffic becomes a dataset. Part of the dataset hash: change it and the hash changes."""

    keep_truncated: bool = field(default=False, metadata=_help(
        "keep answers the teacher cut at its token limit (finish_reason length); dropped by default, since they "
        "teach the student to stop mid-sentence"))
    min_answer_chars: int = field(default=1, metadata=_help(
        "drop answers shorter than this many characters (stripped); tool-call answers always pass"))
    max_tokens: int | None = field(default=4096, metadata=_help(
        "drop examples longer than this many tokens (characters / 4 unless a tokenizer count is passed); "
        "set it to the trainer's maximum sequence length. None: no limit"))
    pii_mode: PiiMode = field(default="redact", metadata=_help(
        "personal data (emails, phones, cards, IBANs, IPs): 'redact' replaces it with [EMAIL]-style "
        "placeholders, 'drop' leaves the example out, 'off' keeps it as captured"))
    near_dup_threshold: float | None = field(default=0.9, metadata=_help(
        "drop an example whose shingle Jaccard similarity to an older kept one is at least this; "
        "None: exact duplicates only"))
    num_perm: int = field(default=128, metadata=_help("MinHash permutations (64-128 is plenty)"))
    shingling: Shingling = field(default="word", metadata=_help(
        "near-duplicate shingles: 'word' 3-grams, or 'char' 5-grams for text without spaces"))
    min_rating: float | None = field(default=DEFAULT_MIN_RATING, metadata=_help(
        "drop an exchange the app rated below this (POST /v1/feedback), in the app's own scale: a boolean rating "
        "counts as 1 or 0, so the default drops a thumbs-down; 4 for 1-5 stars; None: ratings drop nothing. "
        "The distiller takes it from the task's `tasks.<task>.min_rating` setting"))
    use_corrections: bool = field(default=True, metadata=_help(
        "train on the corrected answer an app gave as feedback in place of the captured one"))
    language_cap: int | None = field(default=None, metadata=_help(
        "keep at most this many examples per detected language (oldest first); None: no cap"))
    validation_fraction: float = field(default=0.1, metadata=_help("share of examples in the validation split"))
    test_fraction: float = field(default=0.1, metadata=_help(
        "share of examples in the test split (held out from training and used to evaluate the student)"))
    prompt_distillation: PromptDistillation = field(default="auto", metadata=_help(
        "drop the task's system prompt from training examples: 'auto' when every kept exchange has the same "
        "one, 'on' always (exchanges with other system prompts are dropped), 'off' never"))
    seed: int = field(default=0, metadata=_help(
        "salts the split hash and MinHash; keep it fixed across dataset versions or test examples move "
        "into train"))

    def __post_init__(self) -> None:
        for name, options in (("pii_mode", PiiMode), ("prompt_distillation", PromptDistillation),
                              ("shingling", Shingling)):
            if getattr(self, name) not in get_args(options):
                raise ValueError(f"{name} must be one of {get_args(options)}, not {getattr(self, name)!r}")
        if self.min_rating is not None and not math.isfinite(self.min_rating):
            raise ValueError("min_rating must be a finite number or None")
        if self.min_answer_chars < 0:
            raise ValueError("min_answer_chars must be >= 0")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be positive or None")
        if self.near_dup_threshold is not None and not 0 < self.near_dup_threshold <= 1:
            raise ValueError("near_dup_threshold must be in (0, 1] or None")
        if self.num_perm < 1:
            raise ValueError("num_perm must be positive")
        if self.language_cap is not None and self.language_cap < 1:
            raise ValueError("language_cap must be positive or None")
        fractions = (self.validation_fraction, self.test_fraction)
        if any(not 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
            raise ValueError("validation_fraction and test_fraction must be in [0, 1) and leave room for train")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurationConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown curation options: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each option's help text, for CLI flags and docs."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


@dataclass(frozen=True, slots=True)
class CuratedExample:
    request_id: str
    split: Split
    language: str
    tokens: int
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    stop: list[str] | None = None  # the app's stop sequences: evaluation asks the same way

    def example(self) -> dict[str, Any]:
        """The OpenAI chat fine-tuning example: `{"messages": [...], "tools": [...]}`."""
        example: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            example["tools"] = self.tools
        return example

    def record(self) -> dict[str, Any]:
        """The JSONL line: the example plus `metadata` (strip it for services that reject unknown keys)."""
        return {**self.example(),
                "metadata": {"request_id": self.request_id, "language": self.language, "split": self.split,
                             **({"stop": self.stop} if self.stop else {})}}


@dataclass(frozen=True, slots=True)
class CuratedDataset:
    config: CurationConfig
    train: tuple[CuratedExample, ...]
    validation: tuple[CuratedExample, ...]
    test: tuple[CuratedExample, ...]
    system_prompt_hash: str | None
    """`text_hash` of the system prompt distilled away, or None when examples keep their system prompts."""
    report: dict[str, Any]
    dataset_hash: str
    dropped: tuple[tuple[str, str], ...]
    """(request_id, reason) of every exchange left out, oldest first."""
    system_prompt: str | None = None
    """The system prompt distilled away (redacted as the examples are): the base-model baseline is asked with it."""

    def split(self, name: Split) -> tuple[CuratedExample, ...]:
        examples: tuple[CuratedExample, ...] = getattr(self, name)
        return examples

    @property
    def counts(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}


# ------------------------------------------------------------------------------------------------- splits


def split_key(messages: Sequence[dict[str, Any]], seed: int = 0) -> str:
    """sha256 of the normalised user messages (not the answer, not the request id): what makes two examples
    "the same question" for held-out purposes. Without user messages, every non-system message counts."""
    texts = [message_text(m.get("content")) for m in messages if m.get("role") == "user"]
    if not texts:
        texts = ["\n".join(message_strings(m)) for m in messages if m.get("role") not in _SYSTEM_ROLES]
    payload = f"{seed}\x00" + "\x1e".join(normalise_text(text) for text in texts)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def split_of(messages: Sequence[dict[str, Any]], *, validation_fraction: float = 0.1, test_fraction: float = 0.1,
             seed: int = 0) -> Split:
    """The split of an example, from its user messages alone: stable across runs and independent of the
    other examples. The hash maps to [0, 1): test takes the bottom, validation the next band, so growing
    the validation share never moves a test example, and identical questions always share a split."""
    point = int(split_key(messages, seed)[:16], 16) / 2**64
    if point < test_fraction:
        return "test"
    if point < test_fraction + validation_fraction:
        return "validation"
    return "train"


# ------------------------------------------------------------------------------------------------- curation


@dataclass(slots=True)
class _Candidate:
    exchange: Exchange
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tokens: int = 0
    language: str = ""


def stop_sequences(value: object) -> list[str] | None:
    """A request's `stop` (a string or a list of them) as a list; None without one."""
    stops = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    kept = [s for s in stops if isinstance(s, str) and s]
    return kept or None


async def load_task_exchanges(store: Store, task: str) -> list[Exchange]:
    """Every captured exchange of a task, all statuses (so the report counts what was dropped), oldest first."""
    return await store.list_exchanges(task=task)


async def curate_task(store: Store, task: str, config: CurationConfig | None = None, *,
                      count_tokens: filters.TokenCounter | None = None) -> CuratedDataset:
    # forgotten users read after the exchanges: a user forgotten in between is still left out
    exchanges = await load_task_exchanges(store, task)
    return curate(exchanges, config, count_tokens=count_tokens, forgotten=await store.forgotten_user_hashes(),
                  feedback=await store.list_feedback(task=task))


def curate(exchanges: Iterable[Exchange], config: CurationConfig | None = None, *,
           count_tokens: filters.TokenCounter | None = None, forgotten: Collection[str] = (),
           feedback: Iterable[Feedback] = ()) -> CuratedDataset:
    """The curated dataset of `exchanges` (usually one task's). `count_tokens` is a tokenizer's length
    function for the `max_tokens` limit and token statistics; characters / 4 without one. `forgotten` holds
    the `user_hash`es of forgotten users (`Store.forgotten_user_hashes`), whose exchanges are dropped;
    `feedback` is the app's on these exchanges (`Store.list_feedback`)."""
    cfg = config or CurationConfig()
    ordered = sorted(exchanges, key=lambda e: (e.created_at, e.request_id))
    dropped: list[tuple[str, str]] = []
    given = {f.request_id: f for f in feedback}
    candidates = _quality(_not_forgotten(ordered, set(forgotten), dropped), cfg, dropped, given)

    distilled, prompt_counts = _distilled_prompt(candidates, cfg.prompt_distillation)
    if distilled is not None:
        candidates = _keep(candidates, dropped, lambda c: OTHER_SYSTEM_PROMPT
                           if system_prompt(c.messages) != distilled else None)
        for candidate in candidates:
            candidate.messages = _without_system(candidate.messages)

    redacted: dict[str, int] = {}
    if cfg.pii_mode == "redact":
        for candidate in candidates:
            candidate.messages = redact_messages(candidate.messages, tally=redacted)
    elif cfg.pii_mode == "drop":
        candidates = _keep(candidates, dropped, lambda c: filters.pii_filter({"messages": c.messages}))

    for candidate in candidates:
        candidate.tokens = filters.approx_tokens(_example(candidate), count_tokens)
    candidates = _keep(candidates, dropped, lambda c: filters.length_filter(_example(c), cfg.max_tokens,
                                                                            lambda _: c.tokens))
    candidates = _deduplicated(candidates, cfg, dropped)
    candidates = _language_capped(candidates, cfg.language_cap, dropped)

    splits: dict[Split, list[CuratedExample]] = {name: [] for name in SPLITS}
    for candidate in candidates:
        split = split_of(candidate.messages, validation_fraction=cfg.validation_fraction,
                         test_fraction=cfg.test_fraction, seed=cfg.seed)
        splits[split].append(CuratedExample(candidate.exchange.request_id, split, candidate.language,
                                            candidate.tokens, candidate.messages, candidate.tools,
                                            stop_sequences(candidate.exchange.request.get("stop"))))

    system_hash = text_hash(distilled) if distilled is not None else None
    examples = [example for name in SPLITS for example in splits[name]]
    report = _report(cfg, ordered, examples, dropped, redacted, distilled, system_hash, prompt_counts,
                     count_tokens is not None)
    report["feedback"] = _feedback_report(cfg, ordered, examples, given, report["dropped"][LOW_RATING])
    prompt = distilled
    if prompt is not None and cfg.pii_mode == "redact":
        prompt = message_text(redact_messages([{"role": "system", "content": prompt}])[0]["content"])
    return CuratedDataset(config=cfg, train=tuple(splits["train"]), validation=tuple(splits["validation"]),
                          test=tuple(splits["test"]), system_prompt_hash=system_hash, report=report,
                          dataset_hash=dataset_hash(examples, cfg, system_hash), dropped=tuple(dropped),
                          system_prompt=prompt)


def _not_forgotten(ordered: list[Exchange], forgotten: set[str], dropped: list[tuple[str, str]]) -> list[Exchange]:
    if not forgotten:
        return ordered
    kept = []
    for exchange in ordered:
        if exchange.user is not None and user_hash(exchange.user) in forgotten:
            dropped.append((exchange.request_id, FORGOTTEN_USER))
        else:
            kept.append(exchange)
    return kept


def _quality(ordered: list[Exchange], cfg: CurationConfig, dropped: list[tuple[str, str]],
             given: dict[str, Feedback]) -> list[_Candidate]:
    """Exchanges that pass the exchange filters, as training examples (`gateway.export.training_example`); a
    corrected one with its correction as the answer, whatever the captured answer was."""
    candidates = []
    for exchange in ordered:
        feedback = given.get(exchange.request_id)
        if feedback is not None and feedback.correction is not None and cfg.use_corrections:
            messages = [*exchange.request.get("messages", []), feedback.correction]
            candidates.append(_Candidate(exchange, messages, exchange.request.get("tools") or None))
            continue
        if (feedback is not None and feedback.rating is not None and cfg.min_rating is not None
                and feedback.rating < cfg.min_rating):
            dropped.append((exchange.request_id, LOW_RATING))
            continue
        truncated = None if cfg.keep_truncated else filters.truncated_filter(exchange)
        reason = (filters.status_filter(exchange) or truncated
                  or filters.answer_length_filter(exchange, cfg.min_answer_chars) or filters.refusal_filter(exchange))
        example = training_example(exchange) if reason is None else None
        if example is None:
            dropped.append((exchange.request_id, reason or filters.EMPTY_ANSWER))
            continue
        candidates.append(_Candidate(exchange, example["messages"], example.get("tools")))
    return candidates


def _deduplicated(candidates: list[_Candidate], cfg: CurationConfig,
                  dropped: list[tuple[str, str]]) -> list[_Candidate]:
    duplicates = find_duplicates([_dedup_text(c.messages) for c in candidates], threshold=cfg.near_dup_threshold,
                                 num_perm=cfg.num_perm, shingling=cfg.shingling, seed=cfg.seed)
    verdict = {id(c): d.reason for c, d in zip(candidates, duplicates, strict=True) if d is not None}
    return _keep(candidates, dropped, lambda c: verdict.get(id(c)))


def _language_capped(candidates: list[_Candidate], cap: int | None,
                     dropped: list[tuple[str, str]]) -> list[_Candidate]:
    """Sets each candidate's language; beyond `cap` examples of one language, the newer ones are dropped."""
    seen: Counter[str] = Counter()

    def over_cap(candidate: _Candidate) -> str | None:
        candidate.language = detect_language(_user_text(candidate.messages))
        seen[candidate.language] += 1
        return LANGUAGE_CAP if cap is not None and seen[candidate.language] > cap else None

    return _keep(candidates, dropped, over_cap)


def _keep(candidates: list[_Candidate], dropped: list[tuple[str, str]],
          reason_of: Callable[[_Candidate], str | None]) -> list[_Candidate]:
    """The candidates `reason_of` returns None for; the others go to `dropped` with its reason."""
    kept = []
    for candidate in candidates:
        reason = reason_of(candidate)
        if reason is None:
            kept.append(candidate)
        else:
            dropped.append((candidate.exchange.request_id, reason))
    return kept


def _distilled_prompt(candidates: list[_Candidate], mode: PromptDistillation) -> tuple[str | None, Counter[str]]:
    """The system prompt to distil away (None: keep system prompts) and how often each prompt occurs.
    'on' picks the most common non-empty prompt, the oldest on a tie."""
    counts = Counter(system_prompt(c.messages) for c in candidates)
    if mode == "off":
        return None, counts
    if mode == "auto":
        only = next(iter(counts)) if len(counts) == 1 else ""
        return (only or None), counts
    prompts = [(prompt, n) for prompt, n in counts.most_common() if prompt]
    return (prompts[0][0] if prompts else None), counts


def _without_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages after the leading system/developer ones (the ones `system_prompt` reads)."""
    start = 0
    while start < len(messages) and messages[start].get("role") in _SYSTEM_ROLES:
        start += 1
    return messages[start:]


def _example(candidate: _Candidate) -> dict[str, Any]:
    example: dict[str, Any] = {"messages": candidate.messages}
    if candidate.tools:
        example["tools"] = candidate.tools
    return example


def _dedup_text(messages: list[dict[str, Any]]) -> str:
    """The conversation without system messages, answer included, with roles and tool calls."""
    lines = []
    for message in messages:
        if message.get("role") in _SYSTEM_ROLES:
            continue
        names = [str(c["function"].get("name", "")) for c in message.get("tool_calls") or []
                 if isinstance(c, dict) and isinstance(c.get("function"), dict)]
        lines.append(f"{message.get('role')}: " + " ".join([*message_strings(message), *names]))
    return "\n".join(lines)


def _user_text(messages: list[dict[str, Any]]) -> str:
    """What the language is read from: the user's messages (system prompts are often English whatever the
    traffic), else the whole conversation; redaction placeholders are not words of any language."""
    text = "\n".join(message_text(m.get("content")) for m in messages if m.get("role") == "user")
    if not text.strip():
        text = "\n".join(s for m in messages for s in message_strings(m))
    return _PLACEHOLDER.sub(" ", text)


# ------------------------------------------------------------------------------------------------- report


def _report(cfg: CurationConfig, ordered: list[Exchange], examples: list[CuratedExample],
            dropped: list[tuple[str, str]], redacted: dict[str, int], distilled: str | None,
            system_hash: str | None, prompt_counts: Counter[str], tokenizer: bool) -> dict[str, Any]:
    reasons = Counter(reason for _, reason in dropped)
    by_id = {e.request_id: e for e in ordered}
    truncated_at = Counter(str(_token_limit(by_id[rid])) for rid, reason in dropped
                           if reason == filters.TRUNCATED and rid in by_id)
    by_split: dict[str, Counter[str]] = {name: Counter() for name in SPLITS}
    for example in examples:
        by_split[example.split][example.language] += 1
    languages = sum(by_split.values(), Counter())
    return {
        "input": len(ordered),
        "kept": len(examples),
        "dropped_total": len(dropped),
        "dropped": {reason: reasons.get(reason, 0) for reason in (*DROP_REASONS, *sorted(set(reasons) - set(
            DROP_REASONS)))},
        "truncated_at": _sorted_counts(truncated_at),  # the request's token limit → answers cut at it
        "splits": {name: sum(by_split[name].values()) for name in SPLITS},
        "languages": _sorted_counts(languages),
        "languages_by_split": {name: _sorted_counts(by_split[name]) for name in SPLITS},
        "tokens": {"counter": "tokenizer" if tokenizer else "chars/4",
                   **token_stats([example.tokens for example in examples])},
        "pii": {"mode": cfg.pii_mode, "redacted": dict(sorted(redacted.items()))},
        "prompt_distillation": {"mode": cfg.prompt_distillation, "applied": distilled is not None,
                                "system_prompt_hash": system_hash,
                                "distinct_system_prompts": len([p for p in prompt_counts if p])},
        "tasks": sorted({e.task for e in ordered}),
    }


def _feedback_report(cfg: CurationConfig, ordered: list[Exchange], examples: list[CuratedExample],
                     given: dict[str, Feedback], dropped_low: int) -> dict[str, Any]:
    """What the app's feedback did to the dataset: how many exchanges it was given on, how many of those were
    dropped for a low rating, and how many corrected answers were trained on (after every later filter)."""
    ids = {e.request_id for e in ordered}
    on_input = [f for request_id, f in given.items() if request_id in ids]
    kept = {e.request_id for e in examples}
    corrected = [f for f in on_input if f.correction is not None and cfg.use_corrections]
    rated = [f.rating for f in on_input if f.rating is not None]
    return {"min_rating": cfg.min_rating, "exchanges_with_feedback": len(on_input), "rated": len(rated),
            "mean_rating": round(sum(rated) / len(rated), 4) if rated else None,
            "dropped_low_rating": dropped_low, "corrected": len(corrected),
            "corrected_kept": sum(1 for f in corrected if f.request_id in kept)}


def _token_limit(exchange: Exchange) -> int | str:
    """The max_tokens (or max_completion_tokens) a captured request asked for; 'unset' when none."""
    params = exchange.request.get("params") or {}
    limit = params.get("max_tokens") or params.get("max_completion_tokens")
    return limit if isinstance(limit, int) else "unset"


def _sorted_counts(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def token_stats(values: list[int]) -> dict[str, float]:
    """total, mean, p50, p95 (nearest rank) and max; zeros when there are no values."""
    if not values:
        return {"total": 0, "mean": 0.0, "p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"total": sum(ordered), "mean": round(sum(ordered) / len(ordered), 2), "p50": rank(0.5),
            "p95": rank(0.95), "max": ordered[-1]}


# ------------------------------------------------------------------------------------------------- files


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def dataset_hash(examples: Iterable[CuratedExample], config: CurationConfig, system_prompt_hash: str | None) -> str:
    """sha256 over the sorted example lines, the config and the distilled prompt's hash: unchanged data and
    options give the same hash in every run, so a retrain on identical data can be skipped."""
    lines = sorted(_canonical(example.record()) for example in examples)
    payload = _canonical({"format": FORMAT, "config": config.to_dict(), "system_prompt_hash": system_prompt_hash,
                          "examples": lines})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _write_atomic(path: Path, data: bytes) -> str:
    """Write next to `path` and rename over it: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def write_dataset(dataset: CuratedDataset, out_dir: str | Path) -> dict[str, Any]:
    """Write the splits, report.json and manifest.json (last: its presence means the rest is complete).
    Returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for name in SPLITS:
        data = "".join(_canonical(example.record()) + "\n" for example in dataset.split(name)).encode("utf-8")
        files[FILES[name]] = {"examples": len(dataset.split(name)), "sha256": _write_atomic(out / FILES[name], data)}
    if dataset.system_prompt is not None:
        files[SYSTEM_PROMPT_FILE] = {"sha256": _write_atomic(out / SYSTEM_PROMPT_FILE,
                                                             dataset.system_prompt.encode("utf-8"))}
    report = (json.dumps(dataset.report, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    files["report.json"] = {"sha256": _write_atomic(out / "report.json", report)}
    manifest = {"format": FORMAT, "dataset_hash": dataset.dataset_hash, "counts": dataset.counts,
                "system_prompt_hash": dataset.system_prompt_hash, "config": dataset.config.to_dict(), "files": files}
    _write_atomic(out / "manifest.json", (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return manifest
