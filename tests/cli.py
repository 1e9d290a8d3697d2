"""`protege ARGS` for tests: in this process through `protege.cli.main` (output, exit code, what it wrote), or as
the real entry point in a process of its own. stdin is /dev/null unless a test gives one: not pytest's terminal
(with -s), so nobody can confirm a deletion."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import TextIO

import pytest

from protege.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str, stdin: TextIO | None = None) -> tuple[int, str, str]:
    """`protege ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # only this command's output
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdin", stdin or stack.enter_context(open(os.devnull)))
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """stdout of a command that must succeed."""
    code, out, err = run_cli(capsys, *args)
    assert code == 0, (args, err)
    return out


def run_process(*args: str, stdin: int | None = subprocess.DEVNULL,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m protege ARGS`, the real entry point."""
    return subprocess.run([sys.executable, "-m", "protege", *args], capture_output=True, text=True,
                          stdin=stdin, check=check, timeout=120)
