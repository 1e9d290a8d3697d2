"""Admin API under /admin, behind a bearer admin token (separate from gateway keys). Disabled — every
route answers 403 — when no admin token is configured."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway import students as students_ops
from gateway.admin_auth import require_admin
from gateway.errors import BadRequestError, NotFoundError
from gateway.feedback import feedback_json
from gateway.http_errors import dialect_route
from gateway.http_utils import read_json_object, validate
from gateway.openai.errors import OPENAI
from gateway.ramp import describe_ramp
from gateway.state import GatewayState
from gateway.store import StudentVersion
from gateway.students import (
    PromoteRequest,
    RampRequest,
    RolloutUpdate,
    ThresholdUpdate,
    routing_changed,
    student_view,
)
from gateway.tasks import check_task_name


async def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.protege
    token = state.settings.admin_token
    require_admin(None if token is None else token.get_secret_value(), request.headers.get("authorization"))
    return state


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", route_class=dialect_route(OPENAI))

    @router.get("/tasks")
    async def list_tasks(request: Request) -> dict[str, Any]:
        state = await _state(request)
        tasks = {t.name: t for t in await state.store.list_tasks()}
        students = await state.store.list_students()
        rollouts = await state.store.rollouts()
        ramps = {r.task: r for r in await state.store.list_ramps()}
        names = sorted(set(tasks) | {s.task for s in students} | set(rollouts))
        parity = state.service.live_parity()

        def view(s: StudentVersion) -> dict[str, Any]:
            live = parity.get((s.task, s.version))
            shown = {"comparisons": live.comparisons, "mean_agreement": round(live.mean, 4)} \
                if live and live.mean is not None else None
            return {**student_view(s), "live_parity": shown}

        return {"tasks": [{
            "task": name,
            "captured": tasks[name].captured if name in tasks else 0,
            "good": tasks[name].good if name in tasks else 0,
            "rollout_percent": rollouts.get(name, 0.0),
            "ramp": await describe_ramp(state.store, ramps[name]) if name in ramps else None,
            "students": [view(s) for s in students if s.task == name],
        } for name in names]}

    @router.post("/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        """Feedback on any captured request (the app's own route, `/v1/feedback`, takes only its key's)."""
        state = await _state(request)
        recorded = await state.feedback.record(await read_json_object(request, state), client=None, source="admin")
        return feedback_json(recorded)

    @router.get("/tasks/{task}/feedback")
    async def list_feedback(task: str, request: Request) -> dict[str, Any]:
        state = await _state(request)
        return {"task": task, "feedback": [feedback_json(f) for f in await state.store.list_feedback(task=task)]}

    @router.put("/tasks/{task}/rollout")
    async def set_rollout(task: str, request: Request) -> dict[str, Any]:
        state = await _state(request)
        update = validate(RolloutUpdate, await read_json_object(request, state))
        await students_ops.set_rollout(state.store, task, update.percent)
        await routing_changed(state)
        return {"task": task, "rollout_percent": update.percent}

    @router.post("/tasks/{task}/ramp")
    async def start_ramp(task: str, request: Request) -> dict[str, Any]:
        """Start a rollout ramp (it replaces the task's previous one); every gateway on the store moves it."""
        state = await _state(request)
        wanted = validate(RampRequest, await read_json_object(request, state))
        ramp = await students_ops.start_ramp(state.store, task, wanted.plan(), version=wanted.version,
                                             student_api_base=state.settings.student_api_base,
                                             student_api_key=state.settings.student_key)
        await routing_changed(state)
        return await describe_ramp(state.store, ramp)

    @router.get("/tasks/{task}/ramp")
    async def show_ramp(task: str, request: Request) -> dict[str, Any]:
        state = await _state(request)
        check_task_name(task)
        found = await state.store.list_ramps(task=task)
        if not found:
            raise NotFoundError(f"task {task!r} has no rollout ramp", param="task")
        return await describe_ramp(state.store, found[0])

    @router.delete("/tasks/{task}/ramp")
    async def stop_ramp(task: str, request: Request) -> dict[str, Any]:
        state = await _state(request)
        check_task_name(task)
        stopped = await students_ops.stop_ramp(state.store, task, "stopped through the admin API")
        if stopped is None:
            raise BadRequestError(f"task {task!r} has no running rollout ramp", param="task")
        return await describe_ramp(state.store, stopped)

    @router.post("/tasks/{task}/promote")
    async def promote(task: str, request: Request) -> dict[str, Any]:
        state = await _state(request)
        wanted = validate(PromoteRequest, await read_json_object(request, state))
        await students_ops.promote(state.store, task, wanted.version,
                                   student_api_base=state.settings.student_api_base,
                                   student_api_key=state.settings.student_key)
        await routing_changed(state)
        return {"task": task, "active_version": wanted.version}

    @router.post("/tasks/{task}/rollback")
    async def rollback(task: str, request: Request) -> dict[str, Any]:
        state = await _state(request)
        result = await students_ops.rollback(state.store, task)
        await routing_changed(state)
        return {"task": task, "retired_version": result.retired, "active_version": result.active}

    @router.put("/tasks/{task}/threshold")
    async def set_threshold(task: str, request: Request) -> dict[str, Any]:
        state = await _state(request)
        update = validate(ThresholdUpdate, await read_json_object(request, state))
        version = await students_ops.set_threshold(state.store, task, update.version, update.threshold)
        await routing_changed(state)
        return {"task": task, "version": version, "threshold": update.threshold}

    return router
