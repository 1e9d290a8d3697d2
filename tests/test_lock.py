"""The committed lock (requirements/*.lock) agrees with pyproject.toml: stamped with today's inputs,
every requirement pinned inside its range, hashed, one version per package across the locks, torch
only as its CPU build and never in the gateway's lock."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.servers import REPO
from tools import lock

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
REQUIREMENTS = REPO / "requirements"


def requirements_of(extras: tuple[str, ...]) -> list[Requirement]:
    names = PYPROJECT["project"]["dependencies"] + [
        r for extra in extras for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return [Requirement(r) for r in names]


def test_every_lock_is_stamped_with_todays_inputs() -> None:
    assert lock.stale_locks() == [], "pyproject.toml or requirements/*.in changed without `make lock`"


def test_a_dependency_change_without_a_new_lock_is_caught(tmp_path: Path) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REQUIREMENTS, tmp_path / "requirements")
    assert lock.stale_locks(tmp_path) == []
    text = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace('"rich>=13', '"rich>=14', 1))
    assert set(lock.stale_locks(tmp_path)) == set(lock.ALL_LOCKS)
    # a comment or an unrelated table is not a dependency change
    (tmp_path / "pyproject.toml").write_text(text + "\n# a comment\n[tool.example]\nx = 1\n")
    assert lock.stale_locks(tmp_path) == []


@pytest.mark.parametrize(("name", "extras"), lock.LOCKS.items())
def test_every_requirement_is_pinned_inside_its_range(name: str, extras: tuple[str, ...]) -> None:
    pins = lock.pins(REQUIREMENTS / name)
    for requirement in requirements_of(extras):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pins.get(lock.normalise(requirement.name))
        assert version is not None, f"{requirement.name} is not in {name}"
        assert requirement.specifier.contains(version, prereleases=True), f"{name}: {requirement.name}=={version}"


@pytest.mark.parametrize("name", lock.ALL_LOCKS)
def test_every_pin_is_exact_and_hashed(name: str) -> None:
    text = (REQUIREMENTS / name).read_text()
    blocks = [b for b in text.replace("\\\n", " ").splitlines() if b and not b.startswith((" ", "#"))]
    assert blocks
    for block in blocks:
        assert lock.PIN.match(block), block
        assert "--hash=sha256:" in block, f"{name}: {block.split()[0]} has no hash"


def test_one_version_per_package_across_the_locks() -> None:
    dev = lock.pins(REQUIREMENTS / "dev.lock")
    for name in [*lock.LOCKS, lock.INSTALLER_LOCK]:
        for package, version in lock.pins(REQUIREMENTS / name).items():
            assert dev.get(package) == version, f"{name}: {package}=={version}, dev.lock: {dev.get(package)}"


def test_torch_is_the_cpu_build_and_stays_out_of_the_gateway() -> None:
    for name in ("dev.lock", "trainer.lock"):
        assert lock.pins(REQUIREMENTS / name)["torch"].endswith("+cpu")
    gateway = lock.pins(REQUIREMENTS / "gateway.lock")
    heavy = {"torch", "transformers", "peft", "accelerate", "safetensors"} & set(gateway)
    assert not heavy and not any(p.startswith(("nvidia-", "cuda-", "triton")) for p in gateway)


def test_known_bad_releases_are_excluded_in_pyproject_itself() -> None:
    litellm = next(r for r in requirements_of(()) if r.name == "litellm")
    for bad in ("1.82.7", "1.82.8"):  # published compromised, March 2026
        assert not litellm.specifier.contains(bad)
    assert lock.pins(REQUIREMENTS / "dev.lock")["litellm"] not in {"1.82.7", "1.82.8"}
