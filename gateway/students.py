"""Promotion, rollback and rollout of student versions: the operations both the admin API and the
`protege` CLI perform on the store (running gateways pick the change up from there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from gateway.errors import BadRequestError, NotFoundError, UpstreamError
from gateway.store import Store, StudentVersion
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
    await store.set_student_status(task, version, "active")
    return chosen


async def rollback(store: Store, task: str) -> RollbackResult:
    """Retire the active version and reactivate the newest retired one before it, if any."""
    students = await task_students(store, task)
    active = next((s for s in students if s.status == "active"), None)
    if active is None:
        raise BadRequestError(f"task {task!r} has no active student to roll back", param="task")
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


async def set_rollout(store: Store, task: str, percent: float) -> None:
    check_task_name(task)
    if not 0 <= percent <= 100:
        raise BadRequestError("rollout percent must be between 0 and 100", param="percent")
    await store.set_rollout(task, percent)


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
            "serving_price": s.details.serving_price.to_json() if s.details.serving_price else None}


async def routing_changed(state: GatewayState) -> None:
    """Make this process's routing table see a change now rather than at its next refresh."""
    if state.service.students is not None:
        await state.service.students.table.refresh(force=True)
