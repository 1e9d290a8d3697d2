"""Where a benchmark's raw result goes, and what it says about the run: every figure quoted in
bench/RESULTS.md or the README comes from one of these files, committed beside it.

`bench/results/<name>-<date>-<commit>.json` holds the run's own figures under `result` and, under `run`,
the machine (CPUs, model, load average), the date, the commit (and whether the tree had uncommitted
changes) and the versions of what was measured.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
PACKAGES = ("fastapi", "uvicorn", "httpx", "torch", "transformers", "peft", "litellm", "openai")


def commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                          check=False)
    return done.stdout.strip() or None


def dirty() -> bool:
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                          cwd=REPO, check=False)
    return bool(done.stdout.strip())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_record() -> dict[str, Any]:
    """The machine, date, commit and versions of this run."""
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": commit(),
            "uncommitted_changes": dirty(), "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                                                        "platform": platform.platform(),
                                                        "load_average": [round(x, 2) for x in os.getloadavg()]},
            "versions": versions()}


def result_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}-{dt.date.today().isoformat()}-{commit() or 'nocommit'}.json"


def write_result(name: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Write `{"run": …, "result": result}` to `path` (default `result_path(name)`); returns where."""
    out = path or result_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": run_record(), "result": result}, indent=2) + "\n", encoding="utf-8")
    return out
