"""The gateway's commands: `serve`, `keys`, `tasks`, `export` and the student routing commands (`students`,
`rollout` with its ramps, `promote`, `rollback`); the data commands (`forget`, `prune`, `migrate-store`) are in
`gateway.data_cli`. `protege.cli`
composes them with the distiller's and the model server's; the helpers here are shared with those."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson
from rich.console import Console
from rich.table import Table

from gateway import students as students_ops
from gateway.auth import new_key
from gateway.config import Settings, load_settings
from gateway.export import EXPORT_FORMATS, ExportFormat, export_lines
from gateway.ramp import describe_ramp, format_duration, parse_steps
from gateway.savings import parse_duration
from gateway.store import Store, open_store, user_hash
from gateway.store.records import (
    DEFAULT_MAX_FALLBACK_RATE,
    DEFAULT_MIN_COMPARISONS,
    DEFAULT_PARITY_FLOOR,
    DEFAULT_RAMP_SHADOW_RATE,
)
from gateway.students import student_view

if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (flags and env override it)")
    parser.add_argument("--store", metavar="URL", help="store URL, e.g. sqlite:///data/protege.db "
                        "(env PROTEGE_STORE)")


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(args.config, overrides={"store": args.store, **overrides})


def with_store(settings: Settings, work: Callable[[Store], Awaitable[int]]) -> int:
    async def run() -> int:
        store = open_store(settings.store)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def utc_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def show(args: argparse.Namespace, records: list[dict[str, Any]], columns: Sequence[str],
         rows: Iterable[Sequence[str]], empty: str) -> int:
    """A listing: with --json the records, otherwise a table of `rows` (`empty` when there are none)."""
    if args.json:
        print(orjson.dumps(records).decode())
        return 0
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    Console().print(table if records else empty)
    return 0


# --- serve -------------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    overrides: dict[str, Any] = {
        "host": args.host, "port": args.port, "teacher": args.teacher, "teacher_api_base": args.teacher_api_base,
        "teacher_api_key": args.teacher_api_key, "student_api_base": args.student_api_base,
        "admin_token": args.admin_token, "admin_port": args.admin_port, "log_level": args.log_level,
        "auth_required": None if args.auth is None else args.auth == "required",
    }
    settings = settings_from(args, **overrides)
    if args.no_capture:
        settings = settings.model_copy(update={"capture": settings.capture.model_copy(update={"enabled": False})})
    return serve(settings, workers=args.workers)


def add_serve(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible gateway",
                       description="Run the gateway. With no teacher configured it starts the embedded "
                       "model server (SmolLM2-135M-Instruct) and uses it as the teacher: no key needed.")
    store_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--teacher", metavar="MODEL", help="litellm model string, e.g. openai/gpt-4o-mini or "
                   "anthropic/claude-sonnet-4-5 (env PROTEGE_TEACHER)")
    p.add_argument("--teacher-api-base", metavar="URL", help="teacher base URL, e.g. http://host:8000/v1")
    p.add_argument("--teacher-api-key", metavar="KEY", help="teacher key (default: the provider's env var, "
                   "e.g. OPENAI_API_KEY, ANTHROPIC_API_KEY)")
    p.add_argument("--student-api-base", metavar="URL", help="OpenAI-compatible server for students")
    p.add_argument("--admin-token", metavar="TOKEN", help="bearer token for /admin (env PROTEGE_ADMIN_TOKEN)")
    p.add_argument("--admin-port", type=int, help="serve /admin, the console and /metrics only on this port "
                   "(env PROTEGE_ADMIN_PORT; bind it with admin_host in the config); default: on --port")
    p.add_argument("--auth", choices=["required", "off"], help="required: every /v1 request needs a gateway key "
                   "and the gateway will not start without one; off: open while no key exists (env "
                   "PROTEGE_AUTH_REQUIRED; default: required unless --host is a loopback address)")
    p.add_argument("--no-capture", action="store_true", help="do not record exchanges")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes on the one port (default 1); "
                   "/metrics adds up all of them (PROMETHEUS_MULTIPROC_DIR, default a temporary folder)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- tasks -------------------------------------------------------------------------------------

def cmd_tasks(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        tasks = await store.list_tasks()
        return show(args, [{"task": t.name, "source": t.source, "captured": t.captured, "good": t.good,
                            "first_seen": t.first_seen, "last_seen": t.last_seen} for t in tasks],
                    ("task", "source", "captured", "good", "first seen (UTC)", "last seen (UTC)"),
                    ((t.name, t.source, str(t.captured), str(t.good), utc_time(t.first_seen), utc_time(t.last_seen))
                     for t in tasks), "no tasks captured yet")

    return with_store(settings_from(args), work)


def add_tasks(sub: Subparsers) -> None:
    p = sub.add_parser("tasks", help="list tasks with their captured traffic")
    store_flags(p)
    json_flag(p)
    p.set_defaults(func=cmd_tasks)


# --- export ------------------------------------------------------------------------------------

def cmd_export(args: argparse.Namespace) -> int:
    fmt: ExportFormat = args.format

    async def work(store: Store) -> int:
        exchanges = await store.list_exchanges(task=args.task, status=None if fmt == "jsonl-raw" else "ok")
        # an export is a dataset too: rows of forgotten users captured after `protege forget` stay out of it
        forgotten = await store.forgotten_user_hashes()
        exchanges = [e for e in exchanges if e.user is None or user_hash(e.user) not in forgotten]
        out = sys.stdout.buffer if args.out == "-" else Path(args.out).open("wb")  # noqa: SIM115
        written = 0
        try:
            for line in export_lines(exchanges, fmt):
                out.write(line)
                written += 1
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        print(f"wrote {written} examples of task {args.task} to {args.out}", file=sys.stderr)
        return 0

    return with_store(settings_from(args), work)


def add_export(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="write a task's captured exchanges as a fine-tuning file")
    store_flags(p)
    p.add_argument("--task", required=True, help="task name (see `protege tasks`)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file, or - for stdout")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="openai",
                   help="openai: chat fine-tuning JSONL of good exchanges; jsonl-raw: every captured row")
    p.set_defaults(func=cmd_export)


# --- students, rollout, promote, rollback -----------------------------------------------------

def threshold_text(threshold: float | None) -> str:
    return "none: serves nothing" if threshold is None else f"{threshold:.3f}"


def cmd_students(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        students = await store.list_students(task=args.task)
        rollouts = await store.rollouts()
        return show(args, [{**student_view(s), "task": s.task, "rollout_percent": rollouts.get(s.task, 0.0)}
                           for s in students],
                    ("task", "version", "status", "model", "threshold", "rollout %", "created (UTC)"),
                    ((s.task, str(s.version), s.status, s.model, threshold_text(s.threshold),
                      f"{rollouts.get(s.task, 0.0):g}", utc_time(s.created_at)) for s in students),
                    "no student versions yet")

    return with_store(settings_from(args), work)


def cmd_rollout(args: argparse.Namespace) -> int:
    settings = settings_from(args, student_api_base=args.student_api_base)

    async def work(store: Store) -> int:
        if args.percent is not None:
            await students_ops.set_rollout(store, args.task, args.percent)
            print(f"task {args.task}: rollout {args.percent:g}% (gateways pick it up within their refresh interval)")
            return 0
        if args.ramp is not None:
            request = students_ops.RampRequest(
                steps=list(args.ramp), dwell_s=args.dwell, version=args.version, parity_floor=args.parity_floor,
                max_fallback_rate=args.max_fallback_rate, min_comparisons=args.min_comparisons,
                shadow_rate=None if args.shadow_rate is None or args.shadow_rate < 0 else args.shadow_rate)
            ramp = await students_ops.start_ramp(store, args.task, request.plan(), version=args.version,
                                                 student_api_base=settings.student_api_base,
                                                 student_api_key=settings.student_key)
        elif args.stop_ramp:
            stopped = await students_ops.stop_ramp(store, args.task, "stopped with protege rollout --stop-ramp")
            if stopped is None:
                print(f"task {args.task} has no running rollout ramp", file=sys.stderr)
                return 1
            ramp = stopped
        else:
            found = await store.list_ramps(task=args.task)
            if not found:
                print(f"task {args.task}: rollout {(await store.rollouts()).get(args.task, 0.0):g}%, no ramp")
                return 0
            ramp = found[0]
        view = await describe_ramp(store, ramp)
        print(orjson.dumps(view).decode() if args.json else ramp_text(view))
        return 0

    return with_store(settings, work)


def ramp_text(view: dict[str, Any]) -> str:
    """A ramp for people: where it stands, what it does next, and what it did."""
    steps = ", ".join(f"{s:g}" for s in view["steps"])
    lines = [f"task {view['task']}: ramp of version {view['version']} {view['state']} at {view['percent']:g}% "
             f"(steps {steps} %, dwell {format_duration(view['dwell_s'])}, parity floor {view['parity_floor']:g}, "
             f"fallback rate at most {view['max_fallback_rate']:g})"]
    if "next" in view:
        lines.append(f"  next: {view['next']['action']}: {view['next']['reason']}")
    lines += [f"  {utc_time(e['at'])}  {e['kind']:<8} {e['percent']:g}%  {e.get('detail', '')}"
              for e in view["history"]]
    lines.append("gateways move the ramp at their next check (cascade.ramp_check_s)")
    return "\n".join(lines)


def _steps(text: str) -> tuple[float, ...]:
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_promote(args: argparse.Namespace) -> int:
    settings = settings_from(args, student_api_base=args.student_api_base)

    async def work(store: Store) -> int:
        await students_ops.promote(store, args.task, args.version, student_api_base=settings.student_api_base,
                                   student_api_key=settings.student_key)
        print(f"task {args.task}: version {args.version} is active")
        return 0

    return with_store(settings, work)


def cmd_rollback(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        result = await students_ops.rollback(store, args.task)
        now = f"version {result.active} is active" if result.active else "no student is active (teacher only)"
        print(f"task {args.task}: version {result.retired} retired; {now}")
        return 0

    return with_store(settings_from(args), work)


def add_student_commands(sub: Subparsers) -> None:
    p = sub.add_parser("students", help="list student versions with status, threshold and rollout")
    store_flags(p)
    json_flag(p)
    p.add_argument("--task", help="only this task")
    p.set_defaults(func=cmd_students)

    p = sub.add_parser("rollout", help="set the share of a task's traffic sent to its active student, or start, "
                       "show and stop a rollout ramp that raises it step by step while live parity holds",
                       description="Without --percent, --ramp or --stop-ramp: show the task's ramp. A ramp is moved "
                       "by the running gateways: each step holds at least --dwell, then goes on when the step's "
                       "shadow comparisons show live parity (on the version's scorer) at or above --parity-floor "
                       "and the fallback rate at or below --max-fallback-rate; it waits while evidence is short "
                       "and rolls back (to the version active before, at its rollout, or to the teacher alone) as "
                       "soon as a floor is breached. Setting a rollout, promoting or rolling back stops it.")
    store_flags(p)
    json_flag(p)
    p.add_argument("--task", required=True)
    action = p.add_mutually_exclusive_group()
    action.add_argument("--percent", type=float, help="0-100; sticky per user")
    action.add_argument("--ramp", type=_steps, metavar="STEPS", help="start a ramp over these percentages, e.g. "
                        "5,25,50,100 (it replaces the task's previous ramp)")
    action.add_argument("--stop-ramp", action="store_true", help="stop the running ramp where it stands")
    p.add_argument("--dwell", type=_duration, default=3600.0, metavar="DURATION",
                   help="the least time each step holds: 90s, 30m, 1h, 2d (default 1h)")
    p.add_argument("--version", type=int, help="the version to ramp, promoted at the first step (default: the "
                   "active one)")
    p.add_argument("--parity-floor", type=float, default=DEFAULT_PARITY_FLOOR,
                   help=f"live parity each step must hold (default {DEFAULT_PARITY_FLOOR:g})")
    p.add_argument("--max-fallback-rate", type=float, default=DEFAULT_MAX_FALLBACK_RATE,
                   help="the most of the student's requests that may fall back "
                   f"(default {DEFAULT_MAX_FALLBACK_RATE:g})")
    p.add_argument("--min-comparisons", type=int, default=DEFAULT_MIN_COMPARISONS,
                   help=f"shadow comparisons and student requests a step needs (default {DEFAULT_MIN_COMPARISONS})")
    p.add_argument("--shadow-rate", type=float, default=DEFAULT_RAMP_SHADOW_RATE,
                   help=f"while the ramp runs, at least this share of student answers is shadowed (default "
                   f"{DEFAULT_RAMP_SHADOW_RATE:g}; -1: the gateway's cascade.shadow_rate)")
    p.add_argument("--student-api-base", metavar="URL", help="student server to load --version's adapter into "
                   "(env PROTEGE_STUDENT_API_BASE)")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("promote", help="make a student version active (loading its adapter first)")
    store_flags(p)
    p.add_argument("--task", required=True)
    p.add_argument("--version", required=True, type=int)
    p.add_argument("--student-api-base", metavar="URL", help="student server to load the adapter into "
                   "(env PROTEGE_STUDENT_API_BASE)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="retire the active version and reactivate the previous one")
    store_flags(p)
    p.add_argument("--task", required=True)
    p.set_defaults(func=cmd_rollback)


# --- keys --------------------------------------------------------------------------------------

def cmd_keys(args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        if args.action == "add":
            key, record = new_key(args.name)
            await store.add_api_key(record)
            print(f"{record.key_id}: {key}\nKeep this key: it is stored hashed and cannot be shown again.")
            return 0
        if args.action == "revoke":
            if not await store.revoke_api_key(args.key_id):
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
            return 0
        records = await store.list_api_keys()
        return show(args, [{"key_id": r.key_id, "name": r.name, "created_at": r.created_at, "revoked": r.revoked}
                           for r in records],
                    ("key id", "name", "created (UTC)", "revoked"),
                    ((r.key_id, r.name, utc_time(r.created_at), "yes" if r.revoked else "no") for r in records),
                    "no gateway keys: a gateway bound to a loopback address accepts any local client; any other "
                    "refuses to start (auth.required)")

    return with_store(settings_from(args), work)


def add_keys(sub: Subparsers) -> None:
    p = sub.add_parser("keys", help="manage gateway API keys (stored hashed)")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a key and print it once")
    add.add_argument("--name", required=True, help="who or what the key is for")
    listing = actions.add_parser("list", help="list keys (never their values)")
    json_flag(listing)
    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    for sp in (add, listing, revoke):
        store_flags(sp)
        sp.set_defaults(func=cmd_keys)


def register(sub: Subparsers) -> None:
    from gateway.data_cli import add_data_commands  # it builds on the helpers above

    for add in (add_serve, add_tasks, add_export, add_student_commands, add_data_commands, add_keys):
        add(sub)
