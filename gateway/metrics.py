"""Prometheus metrics on an injected registry, with bounded label sets (no user ids).

Several uvicorn workers (`protege serve --workers N`) share one set of metrics through prometheus_client's
multiprocess mode: with `PROMETHEUS_MULTIPROC_DIR` set before prometheus_client is imported, every
process writes its values to files there, and `/metrics` adds them up with a `MultiProcessCollector`.
Each gauge says how its per-process values combine (`multiprocess_mode`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CONFIDENCE_BUCKETS = (-5, -3, -2, -1.5, -1, -0.75, -0.5, -0.3, -0.2, -0.1, -0.05, -0.02, -0.01, 0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


# reasons `CaptureWriter` drops exchanges for; created at zero so rates and alerts see a series
CAPTURE_DROP_REASONS = ("queue_full", "store_error", "unstorable", "shutdown")


def multiprocess_dir() -> str | None:
    """The folder of multiprocess mode, when this process runs in it (prometheus_client reads the variable
    once, at import)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """`registry` is what `/metrics` exposes. With `multiprocess_dir`, it holds a collector that adds up
    the files of every process, and the metrics themselves go on a private registry (exposing both would
    count this process twice)."""

    def __init__(self, registry: CollectorRegistry, *, max_tasks: int = 200,
                 multiprocess_dir: str | None = None) -> None:
        self.registry = registry
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            registry = CollectorRegistry()
        self._max_tasks = max_tasks
        self._tasks: set[str] = set()  # first come, at most max_tasks
        self._pinned: set[str] = set()  # tasks the store or the registry holds: always their own label
        self.requests = Counter("protege_requests", "Chat requests by task, route and outcome",
                                ["task", "route", "status"], registry=registry)
        self.passthrough = Counter("protege_passthrough_requests", "Requests forwarded to a teacher as they came "
                                   "(embeddings, files, …), by route family and HTTP status", ["api", "status"],
                                   registry=registry)
        self.passthrough_cost = Counter("protege_passthrough_cost_usd", "Cost in USD of forwarded requests that "
                                        "report usage, where the model's price is known", ["api"], registry=registry)
        self.tokens = Counter("protege_tokens", "Tokens by task, model and kind (input/output)",
                              ["task", "model", "kind"], registry=registry)
        self.cost = Counter("protege_cost_usd", "Cost in USD of upstream calls, where the price is known",
                            ["task", "route"], registry=registry)
        self.counterfactual_cost = Counter(
            "protege_counterfactual_cost_usd",
            "What the same requests would have cost on the teacher alone (savings = this - protege_cost_usd)",
            ["task", "route"], registry=registry)
        self.unknown_price = Counter("protege_unknown_price_requests", "Requests whose price is unknown",
                                     ["model"], registry=registry)
        self.latency = Histogram("protege_request_duration_seconds", "Total request time seen by the gateway",
                                 ["route", "stream"], buckets=LATENCY_BUCKETS, registry=registry)
        self.upstream_latency = Histogram("protege_upstream_duration_seconds", "Time spent waiting on upstream",
                                          ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.overhead = Histogram("protege_gateway_overhead_seconds", "Gateway time excluding upstream",
                                  ["route"], buckets=OVERHEAD_BUCKETS, registry=registry)
        self.ttft = Histogram("protege_time_to_first_token_seconds", "Streams: time to the first chunk",
                              ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.fallbacks = Counter("protege_fallbacks", "Student answers replaced by the teacher's, by reason",
                                 ["task", "reason"], registry=registry)
        self.confidence = Histogram("protege_student_confidence", "Student confidence scores (log-probability)",
                                    ["task"], buckets=CONFIDENCE_BUCKETS, registry=registry)
        self.predicted_skips = Counter("protege_student_predicted_skips", "Requests sent straight to the teacher "
                                       "because the version's predictor expected the student to fail",
                                       ["task"], registry=registry)
        self.early_stops = Counter("protege_student_early_stops", "Student answers stopped before their end because "
                                   "they could no longer be accepted, by reason (low_confidence, validator)",
                                   ["task", "reason"], registry=registry)
        self.early_stop_tokens = Counter("protege_student_early_stop_tokens", "Tokens the student generated before "
                                         "an early stop", ["task"], registry=registry)
        self.degraded = Counter("protege_degraded_answers", "Student answers served because the teacher was down",
                                ["task"], registry=registry)
        self.rollout = Gauge("protege_rollout_percent", "Share of a task's traffic routed to its student",
                             ["task"], registry=registry, multiprocess_mode="livemax")
        self.ramp_moves = Counter("protege_rollout_ramp_moves", "Moves of rollout ramps, by task and move (advance, "
                                  "finish, rollback, stop), each counted once across replicas", ["task", "move"],
                                  registry=registry)
        self.shadow = Counter("protege_shadow_comparisons", "Student answers compared with a shadow teacher call",
                              ["task", "version"], registry=registry)
        self.shadow_agreement = Counter("protege_shadow_agreement", "Sum of agreement scores of shadow comparisons",
                                        ["task", "version"], registry=registry)
        self.live_parity = Gauge("protege_live_parity", "Mean agreement of student and teacher on shadowed traffic",
                                 ["task", "version"], registry=registry, multiprocess_mode="liveall")
        self.shadow_unscored = Counter("protege_shadow_unscored", "Shadow comparisons that could not be scored on "
                                       "the version's scorer, by reason (no embeddings endpoint, judge not "
                                       "configured or failing)", ["task", "reason"], registry=registry)
        self.judge_calls = Counter("protege_judge_calls", "Calls to a task's LLM judge, by outcome (called, "
                                   "cached, failed)", ["task", "outcome"], registry=registry)
        self.judge_cost = Counter("protege_judge_cost_usd", "What the LLM judge's calls cost, at the judge "
                                  "teacher's price", ["task"], registry=registry)
        self.feedback = Counter("protege_feedback", "Feedback recorded on captured exchanges, by task, where it came "
                                "from (api, header, admin) and verdict (ok, low: below the task's min_rating, "
                                "corrected, unrated)", ["task", "source", "verdict"], registry=registry)
        self.feedback_rejected = Counter("protege_feedback_rejected", "Feedback not recorded, by source and reason "
                                         "(invalid, unknown_request, store_error, too_large, overloaded)",
                                         ["source", "reason"], registry=registry)
        self.retries = Counter("protege_upstream_retries", "Upstream calls retried", ["route"], registry=registry)
        # the registry's state, as every gateway reads it from the store (the same value in every worker)
        self.student_versions = Gauge("protege_student_versions", "Registered student versions (training runs "
                                      "that reached the registry) by task and status", ["task", "status"],
                                      registry=registry, multiprocess_mode="max")
        self.no_threshold = Gauge("protege_student_without_threshold", "1 while a task's active student has no "
                                  "confidence threshold, and so serves none of the task's routed traffic",
                                  ["task"], registry=registry, multiprocess_mode="livemax")
        self.last_training = Gauge("protege_last_training_seconds", "Training time of a task's newest student version",
                                   ["task"], registry=registry, multiprocess_mode="max")
        self.circuit_opened = Counter("protege_circuit_opened", "Times an upstream's circuit breaker opened",
                                      ["upstream"], registry=registry)
        self.rate_limited = Counter("protege_rate_limited_requests", "Requests refused by a per-key rate limit",
                                    ["limit"], registry=registry)
        # each worker has its own queue: the depth is their sum, over the workers alive
        self.capture_queue = Gauge("protege_capture_queue_depth", "Exchanges waiting to be written",
                                   registry=registry, multiprocess_mode="livesum")
        self.captured = Counter("protege_captured_exchanges", "Exchanges written to the store", ["status"],
                                registry=registry)
        self.capture_dropped = Counter("protege_capture_dropped_exchanges", "Exchanges that could not be stored",
                                       ["reason"], registry=registry)
        for reason in CAPTURE_DROP_REASONS:
            self.capture_dropped.labels(reason)
        self.capture_skipped = Counter("protege_capture_skipped_exchanges", "Exchanges not stored on purpose "
                                       "(a forgotten user's)", ["reason"], registry=registry)
        self.capture_restarts = Counter("protege_capture_writer_restarts", "Times the capture writer failed and "
                                        "was started again", registry=registry)

    def process_exited(self) -> None:
        """Drop this process's live gauges from the multiprocess totals (its counters stay counted)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def pin_tasks(self, tasks: Iterable[str], *, limit: int = 1000) -> None:
        """Tasks that exist (captured before this process started, or with a student version): they keep
        their own label whatever clients send, so junk task names cannot push them into 'other'."""
        for task in tasks:
            if len(self._pinned) >= limit:
                return
            self._pinned.add(task)

    def task_label(self, task: str) -> str:
        """The task as a label value: a pinned task's own; else first come up to `max_tasks` distinct
        tasks, after which new ones count as 'other'."""
        if task in self._pinned or task in self._tasks:
            return task
        if len(self._tasks) >= self._max_tasks:
            return "other"
        self._tasks.add(task)
        return task
