"""Promotion, rollback and rollout of student versions, and rollout ramps: the operations the admin API, the
console and the `protege` CLI perform on the store (running gateways pick the change up from there). A change
made by hand stops a running ramp of the task: the person's word wins over the ramp's next move."""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from gateway.errors import BadRequestError, NotFoundError, UpstreamError
from gateway.ramp.decision import check_steps
from gateway.store import RampEvent, RampPlan, RolloutRamp, Store, StudentVersion
from gateway.store.records import (
    DEFAULT_MAX_FALLBACK_RATE,
    DEFAULT_MIN_COMPARISONS,
    DEFAULT_PARITY_FLOOR,
    DEFAULT_RAMP_SHADOW_RATE,
)
from gateway.tasks import check_task_name

if TYPE_CHECKING:
    from gateway.state import GatewayState


@dataclass(frozen=True, slots=True)
class RollbackResult:
    retired: int
    active: int | None


async def task_students(store: Store, task: str) -> list[StudentVersion]:
    check_task_name(task)
    students = await store.list_students(task=task)
    if not students:
        raise NotFoundError(f"task {task!r} has no student versions", param="task")
    return students


async def promote(store: Store, task: str, version: int, *, student_api_base: str | None = None,
                  student_api_key: str | None = None) -> StudentVersion:
    """Make a version active; with a student server, its adapter is loaded there first, so no request
    is routed to a student its server lacks."""
    students = await task_students(store, task)
    chosen = next((s for s in students if s.version == version), None)
    if chosen is None:
        raise NotFoundError(f"task {task!r} has no version {version}", param="version")
    if chosen.status == "rejected":
        raise BadRequestError(f"version {version} of task {task!r} was rejected by the quality gate",
                              param="version")
    if student_api_base:
        await load_student(student_api_base, chosen, api_key=student_api_key)
    await stop_ramp(store, task, f"version {version} promoted outside the ramp")
    await store.set_student_status(task, version, "active")
    return chosen


async def rollback(store: Store, task: str) -> RollbackResult:
    """Retire the active version and reactivate the newest retired one before it, if any."""
    students = await task_students(store, task)
    active = next((s for s in students if s.status == "active"), None)
    if active is None:
        raise BadRequestError(f"task {task!r} has no active student to roll back", param="task")
    await stop_ramp(store, task, f"version {active.version} rolled back outside the ramp")
    previous = max((s for s in students if s.status == "retired" and s.version < active.version),
                   key=lambda s: s.version, default=None)
    if previous is not None:
        await store.set_student_status(task, previous.version, "active")
    await store.set_student_status(task, active.version, "retired")
    return RollbackResult(active.version, previous.version if previous else None)


async def set_threshold(store: Store, task: str, version: int | None, threshold: float | None) -> int:
    """Set a version's confidence threshold (default: the active version); returns the version."""
    students = await task_students(store, task)
    chosen = version or next((s.version for s in students if s.status == "active"), None)
    if chosen is None or not any(s.version == chosen for s in students):
        raise NotFoundError(f"task {task!r} has no version {chosen}", param="version")
    await store.set_student_threshold(task, chosen, threshold)
    return chosen


async def set_rollout(store: Store, task: str, percent: float, *, stops_ramp: bool = True) -> None:
    check_task_name(task)
    if not 0 <= percent <= 100:
        raise BadRequestError("rollout percent must be between 0 and 100", param="percent")
    if stops_ramp:
        await stop_ramp(store, task, f"rollout set to {percent:g} % outside the ramp")
    await store.set_rollout(task, percent)


# --- rollout ramps (moved by every gateway's `gateway.ramp.RampController`) ------------------------------

async def start_ramp(store: Store, task: str, plan: RampPlan, *, version: int | None = None,
                     student_api_base: str | None = None, student_api_key: str | None = None) -> RolloutRamp:
    """Start a ramp of `version` (promoted first, at the first step's rollout) or of the active version; it
    replaces the task's previous ramp. What a rollback restores is noted now: the version active before (or, when
    the active one is ramped, the one `rollback` would reactivate) at the task's current rollout."""
    students = await task_students(store, task)
    active = next((s for s in students if s.status == "active"), None)
    ramped = version if version is not None else (active.version if active else None)
    if ramped is None:
        raise BadRequestError(f"task {task!r} has no active student: name the version to ramp", param="version")
    chosen = next((s for s in students if s.version == ramped), None)
    if chosen is None:
        raise NotFoundError(f"task {task!r} has no version {ramped}", param="version")
    if chosen.status == "rejected":
        raise BadRequestError(f"version {ramped} of task {task!r} was rejected by the quality gate", param="version")
    if chosen.threshold is None:
        raise BadRequestError(f"version {ramped} of task {task!r} has no confidence threshold, so it serves no "
                              "routed traffic: set one first", param="version")
    if active is not None and active.version != ramped:
        previous: int | None = active.version
    else:
        previous = max((s.version for s in students if s.status == "retired" and s.version < ramped), default=None)
    previous_percent = (await store.rollouts()).get(task, 0.0)
    if chosen.status != "active" and student_api_base:  # before anything changes: the server must have it
        await load_student(student_api_base, chosen, api_key=student_api_key)
    await set_rollout(store, task, plan.steps[0])  # stops a ramp already running
    if chosen.status != "active":
        await store.set_student_status(task, ramped, "active")
    now = time.time()
    ramp = RolloutRamp(ramp_id=secrets.token_hex(8), task=task, version=ramped, plan=plan, state="running", step=0,
                       started_at=now, step_started_at=now, updated_at=now, previous_version=previous,
                       previous_percent=previous_percent,
                       history=(RampEvent(now, "start", plan.steps[0], f"ramp of version {ramped} over "
                                          f"{', '.join(f'{s:g}' for s in plan.steps)} %"),))
    await store.put_ramp(ramp)
    return ramp


async def stop_ramp(store: Store, task: str, why: str) -> RolloutRamp | None:
    """Stop the task's running ramp where it stands (its rollout stays); None when none was running."""
    for ramp in await store.list_ramps(task=task):
        if ramp.state == "running":
            now = time.time()
            stopped = dataclasses.replace(ramp, state="stopped", updated_at=now,
                                          history=(*ramp.history, RampEvent(now, "stop", ramp.percent, why)))
            if await store.replace_ramp(ramp, stopped):
                return stopped
    return None


def student_client(api_base: str, api_key: str | None, timeout_s: float) -> httpx.AsyncClient:
    """An HTTP client for a student server (the model server or vLLM), with its API key when it has one."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    return httpx.AsyncClient(base_url=api_base.rstrip("/"), timeout=timeout_s, headers=headers)


async def load_student(api_base: str, student: StudentVersion, timeout_s: float = 120, *,
                       api_key: str | None = None) -> bool:
    """Load a LoRA student into its server; False when it is not a local adapter (a hosted model id)."""
    if not student.artifact or student.trainer != "local":
        return False
    await load_adapter(api_base, student.model, student.artifact, timeout_s, api_key=api_key)
    return True


async def load_adapter(api_base: str, name: str, path: str, timeout_s: float = 120, *,
                       api_key: str | None = None) -> None:
    """Load a LoRA adapter with vLLM's route (the embedded model server speaks it too). An adapter the
    server already has under that name is left as it is."""
    async with student_client(api_base, api_key, timeout_s) as client:
        listed = await client.get("/models")
        if listed.status_code == 200 and any(m.get("id") == name for m in listed.json().get("data", [])):
            return
        response = await client.post("/load_lora_adapter", json={"lora_name": name, "lora_path": path})
    if response.status_code != 200:
        raise UpstreamError(f"student server refused adapter {name}: {response.text[:300]}")


async def base_model_name(api_base: str, timeout_s: float = 10, *, api_key: str | None = None) -> str | None:
    """The base model a student server serves (the listed model without a `parent`)."""
    async with student_client(api_base, api_key, timeout_s) as client:
        response = await client.get("/models")
    if response.status_code != 200:
        return None
    names = [m.get("id") for m in response.json().get("data", []) if not m.get("parent")]
    return str(names[0]) if names else None


# --- what the admin API and the console accept and show --------------------------------------------

class RolloutUpdate(BaseModel):
    percent: float = Field(ge=0, le=100)


class RampRequest(BaseModel):
    steps: list[float] = Field(min_length=1, description="rollout percentages in order, e.g. [5, 25, 50, 100]")
    dwell_s: float = Field(default=3600, ge=0, description="the least time each step holds, in seconds")
    version: int | None = Field(default=None, ge=1, description="the version to ramp (promoted at the first step); "
                                "default: the active version")
    parity_floor: float = Field(default=DEFAULT_PARITY_FLOOR, ge=0, le=1, description="live parity, on the "
                                "version's scorer, that each step must hold")
    max_fallback_rate: float = Field(default=DEFAULT_MAX_FALLBACK_RATE, ge=0, le=1, description="the highest "
                                     "share of the student's routed requests that may fall back")
    min_comparisons: int = Field(default=DEFAULT_MIN_COMPARISONS, ge=2, description="shadow comparisons (and "
                                 "student requests) a step needs before it is judged")
    shadow_rate: float | None = Field(default=DEFAULT_RAMP_SHADOW_RATE, ge=0, le=1, description="while the ramp "
                                      "runs, at least this share of the student's answers is shadowed; null: the "
                                      "gateway's cascade.shadow_rate")

    def plan(self) -> RampPlan:
        try:
            steps = check_steps(tuple(self.steps))
        except ValueError as exc:
            raise BadRequestError(str(exc), param="steps") from None
        return RampPlan(steps, self.dwell_s, self.parity_floor, self.max_fallback_rate, self.min_comparisons,
                        self.shadow_rate)


class PromoteRequest(BaseModel):
    version: int = Field(ge=1)


class ThresholdUpdate(BaseModel):
    version: int | None = Field(default=None, ge=1, description="default: the active version")
    threshold: float | None = Field(description="confidence threshold (a log-probability); null = none, and then "
                                    "the version serves no routed traffic (a very low value such as -1000 accepts "
                                    "every answer that passes the validators)")


def student_view(s: StudentVersion) -> dict[str, Any]:
    return {"version": s.version, "status": s.status, "model": s.model, "base_model": s.base_model,
            "trainer": s.trainer, "threshold": s.threshold, "confidence_method": s.confidence_method,
            "prompt_distilled": s.prompt_distilled, "dataset_hash": s.dataset_hash, "created_at": s.created_at,
            "artifact": s.artifact, "job": {k: (s.details.job or {}).get(k) for k in ("backend", "job_id")},
            "evaluation": s.details.evaluation,
            "costs": {"training_usd": s.details.training_cost_usd, "evaluation_usd": s.details.evaluation_cost_usd,
                      "data_usd": s.details.data_cost_usd, "sources": s.details.cost_sources},
            "serving_price": s.details.serving_price.to_json() if s.details.serving_price else None,
            "predictor": {k: (s.details.predictor or {}).get(k) for k in ("enabled", "reason", "cutoff")}
            if s.details.predictor else None}


async def routing_changed(state: GatewayState) -> None:
    """Make this process's routing table see a change now rather than at its next refresh."""
    if state.service.students is not None:
        await state.service.students.table.refresh(force=True)
