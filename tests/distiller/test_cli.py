"""The `protege` registry commands against a real SQLite store, run as the user runs them: in this process through
`protege.cli.main` (the command's contract: output, exit code, what it wrote), and a few times through the real
`python -m protege` entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli import ok, run_cli
from tests.cli import run_process as protege
from tests.gateway.test_cascade import TASK, register


def test_students_rollout_promote_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.db"
    url = f"sqlite:///{store}"
    register(store, version=1)
    register(store, version=2, threshold=-0.5)
    listing = json.loads(ok(capsys, "students", "--store", url, "--json"))
    assert [(s["version"], s["status"], s["rollout_percent"]) for s in listing] == [(1, "retired", 0.0),
                                                                                   (2, "active", 0.0)]
    assert "rollout 25%" in ok(capsys, "rollout", "--store", url, "--task", TASK, "--percent", "25")
    assert "version 2 retired; version 1 is active" in ok(capsys, "rollback", "--store", url, "--task", TASK)
    assert "version 2 is active" in ok(capsys, "promote", "--store", url, "--task", TASK, "--version", "2")
    listing = json.loads(ok(capsys, "students", "--store", url, "--task", TASK, "--json"))
    assert [(s["status"], s["rollout_percent"], s["threshold"]) for s in listing] == [
        ("retired", 25.0, -1000.0), ("active", 25.0, -0.5)]
    table = ok(capsys, "students", "--store", url)
    assert TASK in table and "active" in table


def test_cli_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    code, _, err = run_cli(capsys, "rollout", "--store", url, "--task", TASK, "--percent", "150")
    assert code == 1 and "between 0 and 100" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "promote", "--store", url, "--task", "nope", "--version", "1")
    assert code == 1 and "has no student versions" in err
    code, _, err = run_cli(capsys, "tasks", "--store", "mysql://x")
    assert code == 2 and "store" in err


def test_the_entry_point_exits_with_the_commands_code() -> None:
    """`python -m protege`, as installed: a failing command's code and one clear line reach the shell."""
    config = protege("tasks", "--store", "mysql://x", check=False)
    assert config.returncode == 2 and "store" in config.stderr and "Traceback" not in config.stderr
    assert config.stdout == ""


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = ("serve", "model-server", "tasks", "export", "students", "rollout", "promote", "rollback",
                "distill", "scheduler", "report", "forget", "prune", "migrate-store", "export-merged", "demo")
    for command in commands:
        out = ok(capsys, command, "--help")
        assert "usage: protege" in out and "--help" in out
    listing = protege("--help").stdout  # the real entry point
    assert all(f"    {command}" in listing for command in commands)
    in_process = ok(capsys, "--help")
    assert all(f"    {command}" in in_process for command in commands)
    assert "--json" in ok(capsys, "tasks", "--help") and "--store" in ok(capsys, "export", "--help")
    assert "--workers" in ok(capsys, "serve", "--help")
    for command, flags in (("forget", ("--user", "--yes", "--store")), ("prune", ("--older-than", "--task", "--yes")),
                           ("migrate-store", ("--from", "--to", "--batch-size"))):
        out = ok(capsys, command, "--help")
        assert all(flag in out for flag in flags), command


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "rollout", "--percent", "5")
    assert code == 2 and out == "" and "usage: protege rollout" in err and "--task" in err
    code, out, err = run_cli(capsys, "rollout", "--task", TASK, "--percent", "5", "--ramp", "5,50")
    assert code == 2 and out == "" and "not allowed with argument" in err
