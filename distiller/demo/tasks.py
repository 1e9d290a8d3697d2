"""The demo's built-in tasks: which workload `protege demo --task` sends, how it asks, and its default sizes.

- `support-extract` (the default): one line of JSON per support ticket, scored field by field; its figures
  are the README's and `bench/demo/2026-12-03-84db08b-report.json`.
- `support-replies`: a free-text first reply to a customer message under a long system prompt, scored with
  the similarity scorer on the teacher's own scale (`distiller.scorers`), and watched live by shadow scoring:
  the gateway also asks the teacher for every student answer and scores the pair on the version's scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from distiller.demo import support_replies, workload


class DemoWorkload(Protocol):
    """What the demo needs of a workload (`workload.Workload`, `support_replies.ReplyWorkload`)."""

    @property
    def task(self) -> str: ...

    @property
    def system_prompt(self) -> str: ...

    @property
    def tickets(self) -> Sequence[Any]: ...  # each has a `kind`: "regular" (or a request kind) or an unusual one

    @property
    def train_count(self) -> int: ...

    @property
    def train(self) -> Sequence[Any]: ...

    @property
    def held_out(self) -> Sequence[Any]: ...

    @property
    def train_indices(self) -> range: ...

    @property
    def held_out_indices(self) -> range: ...

    def messages(self, ticket: Any) -> list[dict[str, str]]: ...


BuildWorkload = Callable[..., DemoWorkload]  # (requests, *, train_fraction, seed, unusual_fraction)


@dataclass(frozen=True, slots=True)
class DemoTask:
    name: str
    what: str  # one line for --help and the report
    build: BuildWorkload
    json_answers: bool  # ask with response_format json_object; report the fields a perfect extraction gets right
    local_stop: tuple[str, ...]  # stop sequences with the local teacher (none with a hosted one)
    keep_truncated: bool  # curation keeps answers cut at max_tokens
    shadow_rate: float  # the gateway's cascade.shadow_rate during the replay: live parity from shadow scoring
    defaults: dict[str, Any] = field(default_factory=dict)  # DemoOptions fields that differ from its defaults
    # free text: (answer, ticket) → which rules of the system prompt the answer follows (for information)
    checks: Callable[[str | None, Any], dict[str, bool]] | None = None

    def build_workload(self, requests: int, *, train_fraction: float, seed: int,
                       unusual_fraction: float) -> DemoWorkload:
        return self.build(requests, train_fraction=train_fraction, seed=seed, unusual_fraction=unusual_fraction)


TASKS: dict[str, DemoTask] = {
    workload.TASK: DemoTask(
        workload.TASK, "support tickets → one line of JSON (order id, city, product, issue); fields scorer",
        workload.build_workload, json_answers=True, local_stop=("\n",), keep_truncated=False, shadow_rate=0.0),
    support_replies.TASK: DemoTask(
        support_replies.TASK, "customer messages → a free-text first reply under a long system prompt's tone, "
        "policy and sign-off rules; similarity scorer, live parity from shadow scoring",
        support_replies.build_workload, json_answers=False, local_stop=(),
        # SmolLM2-135M seldom ends a reply by itself within max_tokens (it goes on apologising): its answers are
        # kept as it wrote them up to max_tokens, and the student, the baselines and the scale are all asked for
        # the same length, so parity compares like with like
        keep_truncated=True, shadow_rate=1.0,
        # a third of its answers are curated out as refusals ("I'm unable to assist with your order"): more
        # requests, and a larger test split, so that the gate decides on at least 30 examples
        defaults={"requests": 360, "max_tokens": 64, "epochs": 4, "learning_rate": 1e-3,
                  "validation_fraction": 0.2, "test_fraction": 0.2},
        checks=support_replies.reply_checks),
}
DEFAULT_TASK = workload.TASK


def demo_task(name: str) -> DemoTask:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown demo task {name!r}; expected one of {', '.join(TASKS)}") from None
