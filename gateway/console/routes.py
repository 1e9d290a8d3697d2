"""The admin console: server-rendered pages under /admin/ui over the same store and operations as the
admin API (`gateway.admin.routes`, `gateway.students`), with the cost figures of `protege report`.

Sign-in: the operator pastes the admin token once; the console answers with a session cookie (HttpOnly,
SameSite=Strict, Path=/admin/ui, Secure over HTTPS) holding a random session id that expires after 8 hours
and ends at sign-out (`gateway.admin_auth`: the store keeps its hash), so the token itself never sits in the
browser. Failed sign-ins are throttled per client. `Authorization: Bearer <admin token>` works as well.
Like the admin API, the console is disabled (403) when the gateway has no admin token.

Forgery: every form that changes state carries the session's CSRF token and is refused when its Origin
header names another host; the SameSite=Strict cookie already keeps cross-site posts unauthenticated, so
either check alone would hold.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from gateway import students as students_ops
from gateway.admin_auth import SESSION_TTL_S, csrf_token, end_session, same, session_is_valid, start_session
from gateway.auth import bearer_token
from gateway.console.errors import CONSOLE
from gateway.console.examples import LISTS, fallbacks, heldout, jsonl, shadows
from gateway.console.figures import calibration_chart, savings_chart
from gateway.console.pages import HEADERS, PREFIX, offline_parity, page, path_part
from gateway.errors import BadRequestError, ProtegeError
from gateway.feedback import verdict
from gateway.http_errors import dialect_route
from gateway.http_utils import read_body, validate
from gateway.parity import LiveParity
from gateway.ramp import describe_ramp, parse_steps
from gateway.savings import Report, TaskReport, parse_duration  # `protege report`'s figures
from gateway.state import GatewayState
from gateway.store import Exchange, Feedback, StudentVersion, TaskSummary
from gateway.students import PromoteRequest, RampRequest, RolloutUpdate, ThresholdUpdate, routing_changed
from gateway.window_report import window_report

log = logging.getLogger("protege.console")

COOKIE = "protege_console"
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"console.css": "text/css"}
WINDOWS: dict[str, tuple[str, float | None]] = {
    "24h": ("the last 24 hours", 86400.0), "7d": ("the last 7 days", 7 * 86400.0),
    "30d": ("the last 30 days", 30 * 86400.0), "all": ("all captured traffic", None)}
DEFAULT_WINDOW = "30d"
RECENT_FALLBACKS = 20
EXAMPLE_LIMIT = 200  # rows of a live list (shadow, fallbacks): the newest of the window
NOTICES = {"rollout": "Rollout updated.", "promote": "Version promoted.", "rollback": "Rolled back.",
           "ramp": "Ramp started: the gateways move it at their next checks.", "stop-ramp": "Ramp stopped.",
           "threshold": "Threshold updated."}


@dataclass(frozen=True, slots=True)
class Session:
    state: GatewayState
    csrf: str
    via_cookie: bool  # False: an Authorization header (no cookie, so no forgery to guard against)
    session_id: str | None = None


@dataclass(slots=True)
class TaskRow:
    name: str
    captured: int = 0
    good: int = 0
    rollout: float = 0.0
    active: StudentVersion | None = None
    parity: float | None = None
    gate: float | None = None
    live_parity: float | None = None
    live_comparisons: int = 0
    report: TaskReport | None = None

    @property
    def below_gate(self) -> bool:
        return self.live_parity is not None and self.gate is not None and self.live_parity < self.gate

    @property
    def cost_per_request(self) -> float | None:
        return self.report.actual_usd / self.report.requests if self.report and self.report.requests else None

    @property
    def teacher_per_request(self) -> float | None:
        r = self.report
        return r.counterfactual_usd / r.requests if r and r.requests else None

    @property
    def fallback_rate(self) -> float | None:
        routes = self.report.routes if self.report else {}
        served = routes.get("student", 0) + routes.get("fallback", 0)
        return routes.get("fallback", 0) / served if served else None


def task_row(name: str, summary: TaskSummary | None, students: Sequence[StudentVersion], rollout: float,
             report: TaskReport | None, live: dict[tuple[str, int], LiveParity]) -> TaskRow:
    row = TaskRow(name, summary.captured if summary else 0, summary.good if summary else 0, rollout, report=report)
    row.active = next((s for s in students if s.status == "active"), None)
    if row.active is not None:
        row.parity, row.gate = offline_parity(row.active)
        if report is not None and report.version == row.active.version and report.live_comparisons:
            row.live_parity, row.live_comparisons = report.live_parity, report.live_comparisons
        elif (row.active.task, row.active.version) in live:  # shadow rows not captured: this process's count
            tally = live[(row.active.task, row.active.version)]
            row.live_comparisons, row.live_parity = tally.comparisons, tally.mean
    return row


@dataclass(slots=True)
class TaskPage:
    name: str
    row: TaskRow
    students: list[StudentVersion]
    shown: StudentVersion | None
    fallbacks: list[Exchange] = field(default_factory=list)
    feedback: list[tuple[Feedback, str]] = field(default_factory=list)  # the newest, with their verdicts
    feedback_counts: dict[str, int] = field(default_factory=dict)  # every feedback of the task, by verdict
    ramp: dict[str, Any] | None = None  # `gateway.ramp.describe_ramp` of the task's newest ramp


def ramp_request(fields: dict[str, str]) -> RampRequest:
    """The console's ramp form: steps as "5,25,50,100" and the dwell as "1h" or "30m"."""
    try:
        steps, dwell_s = parse_steps(fields.get("steps", "")), parse_duration(fields.get("dwell", "1h"))
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    return validate(RampRequest, {"steps": list(steps), "dwell_s": dwell_s,
                                  **{k: fields[k] for k in ("parity_floor", "max_fallback_rate") if fields.get(k)}})


# --- the router ---------------------------------------------------------------------------------

def build_console_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False, route_class=dialect_route(CONSOLE))
    render = page

    async def authenticate(request: Request) -> Session | Response:
        state: GatewayState = request.app.state.protege
        if state.settings.admin_token is None:
            return render("disabled.html", 403)
        token = state.settings.admin_token.get_secret_value()
        presented = bearer_token(request.headers.get("authorization"))
        if presented is not None:
            if not same(presented, token):
                return render("login.html", 403, error="That admin token is not valid.")
            return Session(state, "", via_cookie=False)
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and await session_is_valid(state.store, cookie):
            return Session(state, csrf_token(token, cookie), via_cookie=True, session_id=cookie)
        if request.method == "GET":
            return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=HEADERS)
        return render("login.html", 401, error="Sign in first.")

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:  # browsers that send none still need the CSRF token (or the login token) to pass
            return True
        hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")} - {None}
        return urlsplit(origin).netloc in hosts

    async def form(request: Request, state: GatewayState) -> dict[str, str]:
        raw = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_s)
        if raw and not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise BadRequestError("expected a form (application/x-www-form-urlencoded)")
        parsed = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
        return {key: values[-1] for key, values in parsed.items()}

    async def checked_form(request: Request) -> tuple[Session, dict[str, str]] | Response:
        session = await authenticate(request)
        if isinstance(session, Response):
            return session
        fields = await form(request, session.state)
        if session.via_cookie and not (same_origin(request) and same(fields.get("csrf", ""), session.csrf)):
            return render("error.html", 403, session=session, title="Form refused",
                          message="This form came from another site or an old page: reload the page and try again.")
        return session, fields

    async def load_task(session: Session, task: str, window: str) -> TaskPage | None:
        store = session.state.store
        students = await store.list_students(task=task)
        summary = next((t for t in await store.list_tasks() if t.name == task), None)
        rollouts = await store.rollouts()
        now = time.time()
        since_s = WINDOWS[window][1]
        start = None if since_s is None else now - since_s
        # added up in the store: a few groups of the window, never every row
        report = await window_report(store, task, students, since=start, now=now)
        if not students and summary is None and task not in rollouts and report is None:
            return None
        row = task_row(task, summary, students, rollouts.get(task, 0.0), report, session.state.service.live_parity())
        fallbacks = await store.newest_exchanges(task=task, routes=["fallback"], since=start, limit=RECENT_FALLBACKS)
        config = session.state.settings.task(task)
        judged = [(f, verdict(f, config)) for f in await store.list_feedback(task=task)]
        ramps = await store.list_ramps(task=task)
        return TaskPage(task, row, students, row.active or (students[-1] if students else None), fallbacks,
                        judged[::-1][:RECENT_FALLBACKS], dict(Counter(v for _, v in judged)),
                        await describe_ramp(store, ramps[0], now) if ramps else None)

    async def task_view(request: Request, session: Session, task: str, *, status: int = 200,
                        error: str | None = None) -> Response:
        window = request.query_params.get("window", DEFAULT_WINDOW)
        window = window if window in WINDOWS else DEFAULT_WINDOW
        page = await load_task(session, task, window)
        if page is None:
            return render("error.html", 404, session=session, title="Unknown task",
                          message=f"There is no task named {task!r}.")
        wanted = request.query_params.get("version", "")
        if wanted.isdigit():
            page.shown = next((s for s in page.students if s.version == int(wanted)), page.shown)
        notice = NOTICES.get(request.query_params.get("done", "")) if error is None else None
        return render("task.html", status, session=session, page=page, row=page.row, window=window,
                      windows=WINDOWS, notice=notice, error=error, recent=RECENT_FALLBACKS,
                      evaluation=(page.shown.details.evaluation or {}) if page.shown else {},
                      calibration=(page.shown.details.calibration or {}) if page.shown else {},
                      calibration_svg=calibration_chart(page.shown) if page.shown else None,
                      savings_svg=savings_chart(page.row.report), config=session.state.settings.task(page.name))

    async def act(request: Request, task: str, name: str, fields: dict[str, str], session: Session) -> Response:
        """Run one state-changing operation; on success redirect (post/redirect/get), else show the error."""
        state, store = session.state, session.state.store
        try:
            if name == "rollout":
                update = validate(RolloutUpdate, {"percent": fields.get("percent", "")})
                await students_ops.set_rollout(store, task, update.percent)
            elif name == "promote":
                wanted = validate(PromoteRequest, {"version": fields.get("version", "")})
                await students_ops.promote(store, task, wanted.version,
                                           student_api_base=state.settings.student_api_base,
                                           student_api_key=state.settings.student_key)
            elif name == "rollback":
                await students_ops.rollback(store, task)
            elif name == "ramp":
                await students_ops.start_ramp(store, task, ramp_request(fields).plan(),
                                              student_api_base=state.settings.student_api_base,
                                              student_api_key=state.settings.student_key)
            elif name == "stop-ramp":
                if await students_ops.stop_ramp(store, task, "stopped in the console") is None:
                    raise BadRequestError(f"task {task!r} has no running rollout ramp")
            else:
                raw = fields.get("threshold", "").strip()
                threshold = validate(ThresholdUpdate, {"version": fields.get("version") or None,
                                                       "threshold": raw or None})
                if threshold.threshold is not None and not math.isfinite(threshold.threshold):
                    raise BadRequestError("threshold must be a finite number", param="threshold")
                await students_ops.set_threshold(store, task, threshold.version, threshold.threshold)
            await routing_changed(state)
        except ProtegeError as exc:
            return await task_view(request, session, task, status=exc.status_code, error=exc.public_message)
        log.info("console: %s on task %s", name, task)
        return RedirectResponse(f"{PREFIX}/tasks/{path_part(task)}?done={name}", status_code=303, headers=HEADERS)

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:
            return render("error.html", 404, title="Not found", message="No such file.")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @router.get("/login")
    async def login_page(request: Request) -> Response:
        session = await authenticate(request)
        if isinstance(session, Session):
            return RedirectResponse(PREFIX, status_code=303, headers=HEADERS)
        if request.app.state.protege.settings.admin_token is None:
            return session  # the console is disabled
        return render("login.html")

    @router.post("/login")
    async def login(request: Request) -> Response:
        state: GatewayState = request.app.state.protege
        if state.settings.admin_token is None:
            return render("disabled.html", 403)
        token = state.settings.admin_token.get_secret_value()
        client = request.client.host if request.client else "?"
        wait = state.sign_ins.retry_after(client)
        if wait is not None:
            return render("login.html", 429, error=f"Too many failed sign-ins: try again in {math.ceil(wait)} s.",
                          headers={"Retry-After": str(math.ceil(wait))})
        fields = await form(request, state)
        matches = same(fields.get("token", "").strip(), token)  # always compared: every failure costs the same
        if not same_origin(request):
            return render("login.html", 403, error="This sign-in form came from another site.")
        if not matches:
            state.sign_ins.failed(client)
            return render("login.html", 403, error="That admin token is not valid.")
        response = RedirectResponse(PREFIX, status_code=303, headers=HEADERS)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        response.set_cookie(COOKIE, await start_session(state.store), path=PREFIX, httponly=True,
                            samesite="strict", secure=secure, max_age=int(SESSION_TTL_S))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        session = checked[0]
        if session.session_id is not None:
            await end_session(session.state.store, session.session_id)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    @router.get("")
    async def overview(request: Request) -> Response:
        session = await authenticate(request)
        if isinstance(session, Response):
            return session
        window = request.query_params.get("window", DEFAULT_WINDOW)
        window = window if window in WINDOWS else DEFAULT_WINDOW
        store = session.state.store
        summaries = {t.name: t for t in await store.list_tasks()}
        students = await store.list_students()
        rollouts = await store.rollouts()
        now = time.time()
        since_s = WINDOWS[window][1]
        start = None if since_s is None else now - since_s
        names = sorted(set(summaries) | {s.task for s in students} | set(rollouts))
        reports: dict[str, TaskReport] = {}
        for name in (n for n in names if n in summaries):  # tasks with traffic, added up in the store
            found = await window_report(store, name, [s for s in students if s.task == name], since=start, now=now)
            if found is not None:
                reports[name] = found
        report = Report(generated_at=now, since=start, tasks=[reports[name] for name in sorted(reports)])
        live = session.state.service.live_parity()
        rows = [task_row(name, summaries.get(name), [s for s in students if s.task == name], rollouts.get(name, 0.0),
                         reports.get(name), live) for name in names]
        price_notes = [t.price_note for t in session.state.settings.teachers if t.price_note]
        return render("overview.html", session=session, rows=rows, total=report.total, window=window,
                      windows=WINDOWS, price_notes=price_notes)

    @router.get("/tasks/{task}")
    async def task_page(task: str, request: Request) -> Response:
        session = await authenticate(request)
        if isinstance(session, Response):
            return session
        return await task_view(request, session, task)

    @router.get("/tasks/{task}/examples")
    async def examples_page(task: str, request: Request) -> Response:
        """A list of compared examples (held-out, shadow, fallbacks), side by side; `only=disagreements` narrows
        it, `format=jsonl` exports it."""
        session = await authenticate(request)
        if isinstance(session, Response):
            return session
        query = request.query_params
        name = query.get("list", "heldout")
        window = query.get("window", DEFAULT_WINDOW)
        if name not in LISTS or window not in WINDOWS or query.get("format", "html") not in ("html", "jsonl"):
            return render("error.html", 400, session=session, title="Bad request",
                          message=f"list must be one of {', '.join(LISTS)}, window one of {', '.join(WINDOWS)}, "
                                  "format html or jsonl.")
        store = session.state.store
        students = await store.list_students(task=task)
        if not students and not await store.count_exchanges(task=task):
            return render("error.html", 404, session=session, title="Unknown task",
                          message=f"There is no task named {task!r}.")
        wanted = query.get("version", "")
        shown = next((s for s in students if wanted.isdigit() and s.version == int(wanted)), None) or next(
            (s for s in students if s.status == "active"), students[-1] if students else None)
        since_s = WINDOWS[window][1]
        start = None if since_s is None else time.time() - since_s
        if name == "heldout":
            items = heldout(shown) if shown else []
        elif name == "shadow":
            items = await shadows(store, task, start, EXAMPLE_LIMIT)
        else:
            items = await fallbacks(store, task, start, EXAMPLE_LIMIT)
        only = query.get("only") == "disagreements"
        shown_items = [item for item in items if item.disagrees] if only else items
        if query.get("format") == "jsonl":
            filename = f"{task}-{name}{'-v' + str(shown.version) if name == 'heldout' and shown else ''}" \
                       f"{'-disagreements' if only else ''}.jsonl"
            return Response(jsonl(shown_items), media_type="application/x-ndjson", headers={
                **HEADERS, "Content-Disposition": f'attachment; filename="{path_part(filename)}"'})
        return render("examples.html", session=session, task=task, list_name=name, lists=LISTS, items=shown_items,
                      total=len(items), only=only, window=window, windows=WINDOWS, students=students, shown=shown,
                      limit=EXAMPLE_LIMIT)

    @router.post("/tasks/{task}/{operation}")
    async def task_operation(task: str, operation: str, request: Request) -> Response:
        checked = await checked_form(request)
        if isinstance(checked, Response):
            return checked
        session, fields = checked
        if operation not in NOTICES:
            return render("error.html", 404, session=session, title="Not found", message="No such operation.")
        return await act(request, task, operation, fields, session)

    return router
