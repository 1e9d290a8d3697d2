"""The `protege` registry commands against a real SQLite store, run as the user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.gateway.test_cascade import TASK, register


def protege(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "distiller.cli", *args], capture_output=True, text=True,
                          check=check)


def test_students_rollout_promote_rollback(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    url = f"sqlite:///{store}"
    register(store, version=1)
    register(store, version=2, threshold=-0.5)
    listing = json.loads(protege("students", "--store", url, "--json").stdout)
    assert [(s["version"], s["status"], s["rollout_percent"]) for s in listing] == [(1, "retired", 0.0),
                                                                                   (2, "active", 0.0)]
    assert "rollout 25%" in protege("rollout", "--store", url, "--task", TASK, "--percent", "25").stdout
    assert "version 2 retired; version 1 is active" in protege("rollback", "--store", url, "--task", TASK).stdout
    assert "version 2 is active" in protege("promote", "--store", url, "--task", TASK, "--version", "2").stdout
    listing = json.loads(protege("students", "--store", url, "--task", TASK, "--json").stdout)
    assert [(s["status"], s["rollout_percent"], s["threshold"]) for s in listing] == [
        ("retired", 25.0, None), ("active", 25.0, -0.5)]
    table = protege("students", "--store", url).stdout
    assert TASK in table and "active" in table


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    bad = protege("rollout", "--store", url, "--task", TASK, "--percent", "150", check=False)
    assert bad.returncode == 1 and "between 0 and 100" in bad.stderr and "Traceback" not in bad.stderr
    missing = protege("promote", "--store", url, "--task", "nope", "--version", "1", check=False)
    assert missing.returncode == 1 and "has no student versions" in missing.stderr
    config = protege("tasks", "--store", "mysql://x", check=False)
    assert config.returncode == 2 and "store" in config.stderr


def test_every_command_has_help() -> None:
    commands = ("serve", "model-server", "tasks", "export", "students", "rollout", "promote", "rollback",
                "distill", "scheduler", "report", "forget", "prune", "migrate-store", "export-merged", "demo")
    for command in commands:
        out = protege(command, "--help").stdout
        assert "usage: protege" in out and "--help" in out
    listing = protege("--help").stdout
    assert all(f"    {command}" in listing for command in commands)
    assert "--json" in protege("tasks", "--help").stdout and "--store" in protege("export", "--help").stdout
    assert "--workers" in protege("serve", "--help").stdout
    for command, flags in (("forget", ("--user", "--yes", "--store")), ("prune", ("--older-than", "--task", "--yes")),
                           ("migrate-store", ("--from", "--to", "--batch-size"))):
        out = protege(command, "--help").stdout
        assert all(flag in out for flag in flags), command
