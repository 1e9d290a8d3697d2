"""The gateway's data commands: `forget` (a user's exchanges), `prune` (retention) and `migrate-store` (one
store into another). Deletions ask first on a terminal, need --yes otherwise, and show a progress bar."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.cli import json_flag, positive_int, settings_from, store_flags, utc_time, with_store
from gateway.savings import parse_duration
from gateway.store import Store, redacted_url, user_hash

if TYPE_CHECKING:
    from gateway.cli import Subparsers


def _may_ask(yes: bool, command: str) -> bool:
    """Whether the command may go on to ask (or was told --yes). Checked before the store is opened: a script or
    a cron job has nobody to answer, and must say --yes rather than hang or delete unasked."""
    if yes or sys.stdin.isatty():
        return True
    print(f"protege {command}: stdin is not a terminal, so nobody can confirm the deletion; pass --yes",
          file=sys.stderr)
    return False


def _confirmed(yes: bool, question: str) -> bool:
    if yes:
        return True
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("nothing deleted")
    return False


@contextlib.contextmanager
def _progress_bar(description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A rich bar on stderr (stdout keeps the summary); `update(done, total)`. Transient: gone once done. Off when
    stderr is no terminal: a log file would only get blank lines."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        # the total is counted before the work starts; rows captured meanwhile can make `done` pass it
        yield lambda done, total: bar.update(task, completed=done, total=max(done, total))


def cmd_forget(args: argparse.Namespace) -> int:
    if not args.user:
        print("protege forget: --user must not be empty", file=sys.stderr)
        return 2
    if not _may_ask(args.yes, "forget"):
        return 2

    async def work(store: Store) -> int:
        total = await store.count_exchanges(user=args.user)
        if not _confirmed(args.yes, f"Delete {total} exchanges of user {args.user!r} and keep the user out of "
                          "future datasets?"):
            return 1
        with _progress_bar("forgetting", total) as update:
            deleted = await store.forget_user(args.user, batch_size=args.batch_size,
                                              progress=lambda done: update(done, total))
        # the id is not echoed: this line ends up in logs, and the store keeps only its hash
        print(f"deleted {deleted} exchanges of the user; recorded as forgotten (sha256 "
              f"{user_hash(args.user)[:12]}…): exchanges captured later are left out of datasets")
        return 0

    return with_store(settings_from(args), work)


def cmd_prune(args: argparse.Namespace) -> int:
    try:
        age_s = parse_duration(args.older_than)
    except ValueError as exc:
        print(f"protege prune: {exc}", file=sys.stderr)
        return 2
    if age_s <= 0:
        print("protege prune: --older-than must be more than 0", file=sys.stderr)
        return 2
    if not _may_ask(args.yes, "prune"):
        return 2
    cutoff = time.time() - age_s
    of_task = "" if args.task is None else f" of task {args.task}"
    scope = f"exchanges{of_task} older than {args.older_than} (captured before {utc_time(cutoff)} UTC)"

    async def work(store: Store) -> int:
        total = await store.count_exchanges(task=args.task, created_before=cutoff)
        if not _confirmed(args.yes, f"Delete {total} {scope}?"):
            return 1
        with _progress_bar("pruning", total) as update:
            deleted = await store.delete_exchanges_before(cutoff, task=args.task, batch_size=args.batch_size,
                                                          progress=lambda done: update(done, total))
        print(f"deleted {deleted} {scope}")
        return 0

    return with_store(settings_from(args), work)


def cmd_migrate_store(args: argparse.Namespace) -> int:
    from gateway.store.migrate import migrate_store

    source, dest = redacted_url(args.source), redacted_url(args.dest)
    with _progress_bar("copying exchanges", 0) as update:
        counts = asyncio.run(migrate_store(args.source, args.dest, batch_size=args.batch_size, progress=update))
    if args.json:
        print(orjson.dumps({"from": source, "to": dest, **counts}).decode())
        return 0
    print(f"copied {source} → {dest}\n"
          f"  exchanges:       {counts['exchanges']} added ({counts['exchanges_read']} read, "
          f"{counts['exchanges_forgotten']} of forgotten users left out)\n"
          f"  gateway keys:    {counts['api_keys']} added\n"
          f"  students:        {counts['students']} added\n"
          f"  rollouts:        {counts['rollouts']} set\n"
          f"  rollout ramps:   {counts['ramps']} copied\n"
          f"  forgotten users: {counts['forgotten_users']} added\n"
          f"  responses:       {counts['responses']} added (Responses API conversation state)")
    return 0


def deletion_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed when stdin is not a "
                   "terminal)")
    p.add_argument("--batch-size", type=positive_int, default=1000, metavar="N", help="rows per delete transaction "
                   "(default 1000)")


def add_data_commands(sub: Subparsers) -> None:
    p = sub.add_parser("forget", help="delete every captured exchange of a user and keep the user out of datasets",
                       description="Delete every captured exchange whose user (the request's `user` field or the "
                       "X-Protege-User header) is USER, in batches, and record the user as forgotten — as a sha256 "
                       "of the id, never the id itself. Curation and export then leave out the user's exchanges "
                       "captured later (e.g. in flight on another replica); run it again to delete those too. "
                       "Students already trained are not changed.")
    store_flags(p)
    p.add_argument("--user", required=True, help="the user id, exactly as clients send it")
    deletion_flags(p)
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("prune", help="delete captured exchanges older than an age (retention)",
                       description="Delete captured exchanges older than DURATION, in batches so that capture is "
                       "never blocked for long. To do it on a schedule, set capture.retention_days: `protege "
                       "scheduler` applies it at each check.")
    store_flags(p)
    p.add_argument("--older-than", required=True, metavar="DURATION", help="age, e.g. 90d, 12h, 30m, 2w")
    p.add_argument("--task", help="only this task's exchanges")
    deletion_flags(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("migrate-store", help="copy one store into another, e.g. SQLite to PostgreSQL",
                       description="Copy exchanges, gateway keys, students, rollouts, rollout ramps, forgotten users, "
                       "feedback and stored responses from one "
                       "store to another (typically sqlite:///… to postgresql://… when adding gateway replicas). "
                       "Safe to re-run: only what the destination lacks is added, so a second run after stopping "
                       "the old gateway picks up what it captured meanwhile. Exchanges of forgotten users are not "
                       "copied. Both stores are brought to the current schema first; the source's data is not "
                       "changed.")
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="the store to copy from")
    p.add_argument("--to", dest="dest", required=True, metavar="URL", help="the store to copy into")
    p.add_argument("--batch-size", type=positive_int, default=500, metavar="N", help="exchanges per page "
                   "(default 500)")
    json_flag(p)
    p.set_defaults(func=cmd_migrate_store)


