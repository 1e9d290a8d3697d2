"""Typed records for what the gateway notes on a captured row (`Exchange.extra`) and what the distiller
records about a student (`StudentVersion.details`). Both are stored as JSON (`extra_json`, `details_json`)
with the keys the fields are named after, omitting what is unset. Reading is lenient: rows written by an
older gateway, or edited by hand, may lack a key or hold a value of another type; such a value reads as
unset rather than failing a report, and keys nobody knows are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _dict(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _set(**values: object) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class StudentNote:
    """What the student did on a row. A student row: the version that answered and its confidence. A fallback
    row: why its answer was rejected, what it said and what that attempt cost."""

    version: int | None = None
    model: str | None = None
    confidence: float | None = None
    reason: str | None = None
    detail: str | None = None
    message: dict[str, Any] | None = None
    cost_usd: float | None = None
    completion_tokens: int | None = None  # what the rejected attempt generated (early stop keeps it small)

    def to_json(self) -> dict[str, Any]:
        return _set(version=self.version, model=self.model, confidence=self.confidence, reason=self.reason,
                    detail=self.detail, message=self.message, cost_usd=self.cost_usd,
                    completion_tokens=self.completion_tokens)

    @classmethod
    def from_json(cls, data: object) -> StudentNote | None:
        if not isinstance(data, dict):
            return None
        return cls(version=_int(data.get("version")), model=_str(data.get("model")),
                   confidence=_float(data.get("confidence")), reason=_str(data.get("reason")),
                   detail=_str(data.get("detail")), message=_dict(data.get("message")),
                   cost_usd=_float(data.get("cost_usd")), completion_tokens=_int(data.get("completion_tokens")))


@dataclass(frozen=True, slots=True)
class ShadowNote:
    """A shadow row: the teacher's answer to a request the student served, scored against the student's."""

    version: int
    agreement: float

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "agreement": self.agreement}

    @classmethod
    def from_json(cls, data: object) -> ShadowNote | None:
        if not isinstance(data, dict):
            return None
        version, agreement = _int(data.get("version")), _float(data.get("agreement"))
        return None if version is None or agreement is None else cls(version, agreement)


@dataclass(frozen=True, slots=True)
class ExchangeExtra:
    """The gateway's notes on a captured row, beyond its columns."""

    student: StudentNote | None = None
    shadow: ShadowNote | None = None
    counterfactual_cost_usd: float | None = None  # student rows: what the teacher would have charged
    teacher_error: str | None = None  # degraded mode: why the teacher could not answer
    price_source: str | None = None  # where the price of the row's answer comes from (configured, list, compute)
    client: str | None = None  # the gateway key that sent it (`KeyRing.check`): only that key may give feedback

    def to_json(self) -> dict[str, Any]:
        return _set(student=self.student.to_json() if self.student else None,
                    shadow=self.shadow.to_json() if self.shadow else None,
                    counterfactual_cost_usd=self.counterfactual_cost_usd, teacher_error=self.teacher_error,
                    price_source=self.price_source, client=self.client)

    @classmethod
    def from_json(cls, data: object) -> ExchangeExtra:
        if not isinstance(data, dict):
            return cls()
        return cls(student=StudentNote.from_json(data.get("student")), shadow=ShadowNote.from_json(data.get("shadow")),
                   counterfactual_cost_usd=_float(data.get("counterfactual_cost_usd")),
                   teacher_error=_str(data.get("teacher_error")), price_source=_str(data.get("price_source")),
                   client=_str(data.get("client")))


NO_EXTRA = ExchangeExtra()
"""A row with no notes (a shared default: the record is frozen)."""


@dataclass(frozen=True, slots=True)
class GateResult:
    """The quality gate a version was held to when it was registered."""

    passed: bool | None = None
    message: str | None = None
    min_parity: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _set(passed=self.passed, message=self.message, min_parity=self.min_parity)

    @classmethod
    def from_json(cls, data: object) -> GateResult | None:
        if not isinstance(data, dict):
            return None
        return cls(_bool(data.get("passed")), _str(data.get("message")), _float(data.get("min_parity")))


@dataclass(frozen=True, slots=True)
class ServingPrice:
    """What one request to a version costs per token where it is served, when the distiller could tell: a hosted
    student's list price at its provider. A self-hosted student has none (it is priced by compute)."""

    input_per_token: float
    output_per_token: float
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"input_per_token": self.input_per_token, "output_per_token": self.output_per_token,
                "source": self.source}

    @classmethod
    def from_json(cls, data: object) -> ServingPrice | None:
        if not isinstance(data, dict):
            return None
        price_in, price_out = _float(data.get("input_per_token")), _float(data.get("output_per_token"))
        source = _str(data.get("source"))
        return None if price_in is None or price_out is None or source is None else cls(price_in, price_out, source)


@dataclass(frozen=True, slots=True)
class StudentDetails:
    """A student's lineage as the distiller registered it. The reports are kept as the JSON their producers
    write (`distiller.evaluate.EvaluationReport`, `distiller.calibrate.Calibration`, the trainer's job and
    metrics, the curation report): the gateway reads only the few values with properties here."""

    evaluation: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    gate: GateResult | None = None
    trainer_config: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    curation: dict[str, Any] | None = None
    run_dir: str | None = None
    training_s: float | None = None
    training_cost_usd: float | None = None  # training: compute time × its price, or a hosted job's billed tokens
    evaluation_cost_usd: float | None = None  # the evaluation and calibration runs' compute
    data_cost_usd: float | None = None  # what the teacher answers in the dataset cost when they were served
    cost_sources: dict[str, Any] | None = None  # how each cost was made (measured, configured, assumed)
    serving_price: ServingPrice | None = None  # a hosted student's per-token price at its provider
    scorer: dict[str, Any] | None = None  # `gateway.scoring.ScorerSpec`: how its answers are scored, everywhere
    predictor: dict[str, Any] | None = None  # `gateway.chat.predictor`, with how it did (`distiller.predictor`)

    @property
    def offline_parity(self) -> float | None:
        """The version's mean score against the teacher on the held-out test split."""
        student = _dict((self.evaluation or {}).get("student")) or {}
        return _float((_dict(student.get("score")) or {}).get("mean"))

    @property
    def upfront_cost_usd(self) -> float | None:
        """What the run cost beyond the traffic it learned from (its data was paid for as served traffic)."""
        if self.training_cost_usd is None and self.evaluation_cost_usd is None:
            return None
        return (self.training_cost_usd or 0.0) + (self.evaluation_cost_usd or 0.0)

    @property
    def scorer_kind(self) -> str:
        """How its answers are compared with the teacher's (`gateway.scoring`); structural before scorers existed."""
        kind = (self.scorer or {}).get("kind")
        return kind if isinstance(kind, str) else "fields"

    @property
    def min_parity(self) -> float | None:
        return self.gate.min_parity if self.gate else None

    def to_json(self) -> dict[str, Any]:
        return _set(evaluation=self.evaluation, calibration=self.calibration,
                    gate=self.gate.to_json() if self.gate else None, trainer_config=self.trainer_config,
                    job=self.job, metrics=self.metrics, curation=self.curation, run_dir=self.run_dir,
                    training_s=self.training_s, training_cost_usd=self.training_cost_usd,
                    evaluation_cost_usd=self.evaluation_cost_usd, data_cost_usd=self.data_cost_usd,
                    cost_sources=self.cost_sources,
                    serving_price=self.serving_price.to_json() if self.serving_price else None, scorer=self.scorer,
                    predictor=self.predictor)

    @classmethod
    def from_json(cls, data: object) -> StudentDetails:
        if not isinstance(data, dict):
            return cls()
        return cls(evaluation=_dict(data.get("evaluation")), calibration=_dict(data.get("calibration")),
                   gate=GateResult.from_json(data.get("gate")), trainer_config=_dict(data.get("trainer_config")),
                   job=_dict(data.get("job")), metrics=_dict(data.get("metrics")),
                   curation=_dict(data.get("curation")), run_dir=_str(data.get("run_dir")),
                   training_s=_float(data.get("training_s")), training_cost_usd=_float(data.get("training_cost_usd")),
                   evaluation_cost_usd=_float(data.get("evaluation_cost_usd")),
                   data_cost_usd=_float(data.get("data_cost_usd")), cost_sources=_dict(data.get("cost_sources")),
                   serving_price=ServingPrice.from_json(data.get("serving_price")), scorer=_dict(data.get("scorer")),
                   predictor=_dict(data.get("predictor")))


# --- rollout ramps (`gateway.ramp`) -------------------------------------------------------------------------

DEFAULT_PARITY_FLOOR = 0.85  # the retrain scheduler's live-parity floor too
DEFAULT_MAX_FALLBACK_RATE = 0.5
DEFAULT_MIN_COMPARISONS = 20
DEFAULT_RAMP_SHADOW_RATE = 0.2


@dataclass(frozen=True, slots=True)
class RampPlan:
    """How a rollout ramp moves: the percentages in order, how long each holds at least (`dwell_s`), and what its
    evidence must show to go on: live parity on the version's scorer at or above `parity_floor` and a fallback
    rate at or below `max_fallback_rate`, each over at least `min_comparisons` observations. While the ramp runs,
    `shadow_rate` of the student's answers are shadowed (None: the gateway's `cascade.shadow_rate`)."""

    steps: tuple[float, ...]
    dwell_s: float
    parity_floor: float = DEFAULT_PARITY_FLOOR
    max_fallback_rate: float = DEFAULT_MAX_FALLBACK_RATE
    min_comparisons: int = DEFAULT_MIN_COMPARISONS
    shadow_rate: float | None = DEFAULT_RAMP_SHADOW_RATE

    def to_json(self) -> dict[str, Any]:
        return _set(steps=list(self.steps), dwell_s=self.dwell_s, parity_floor=self.parity_floor,
                    max_fallback_rate=self.max_fallback_rate, min_comparisons=self.min_comparisons,
                    shadow_rate=self.shadow_rate)

    @classmethod
    def from_json(cls, data: object) -> RampPlan:
        """A plan that cannot be read holds at no step: `steps` empty, which the ramp treats as ended."""
        data = _dict(data) or {}
        raw_steps = data.get("steps")
        steps = tuple(s for s in (_float(v) for v in (raw_steps if isinstance(raw_steps, list) else []))
                      if s is not None)
        parity, fallback = _float(data.get("parity_floor")), _float(data.get("max_fallback_rate"))
        minimum = _int(data.get("min_comparisons"))
        return cls(steps, _float(data.get("dwell_s")) or 0.0,
                   DEFAULT_PARITY_FLOOR if parity is None else parity,
                   DEFAULT_MAX_FALLBACK_RATE if fallback is None else fallback,
                   DEFAULT_MIN_COMPARISONS if minimum is None else minimum, _float(data.get("shadow_rate")))


@dataclass(frozen=True, slots=True)
class RampEvent:
    """One move of a ramp, as recorded: when, what (start, advance, finish, rollback, stop), the rollout after it,
    why, and the evidence it was decided on."""

    at: float
    kind: str
    percent: float
    detail: str = ""
    parity: float | None = None
    comparisons: int | None = None
    fallback_rate: float | None = None
    student_requests: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _set(at=self.at, kind=self.kind, percent=self.percent, detail=self.detail or None, parity=self.parity,
                    comparisons=self.comparisons, fallback_rate=self.fallback_rate,
                    student_requests=self.student_requests)

    @classmethod
    def from_json(cls, data: object) -> RampEvent | None:
        if not isinstance(data, dict):
            return None
        at, kind, percent = _float(data.get("at")), _str(data.get("kind")), _float(data.get("percent"))
        if at is None or kind is None or percent is None:
            return None
        return cls(at, kind, percent, _str(data.get("detail")) or "", _float(data.get("parity")),
                   _int(data.get("comparisons")), _float(data.get("fallback_rate")),
                   _int(data.get("student_requests")))
