"""Student versions per task, with lineage, in the store: what was trained on what, how it scored,
and whether it passed the quality gate."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.store import ConfidenceMethod, Store, StudentDetails, StudentVersion


@dataclass(frozen=True, slots=True)
class Gate:
    """A candidate passes when the confidence interval of its parity with the teacher lies at or above
    `min_parity` (the point alone could pass on luck) and it beats the base model. An interval across the gate
    is rejected as undecided: more test data would decide it."""

    min_parity: float = 0.90

    def check(self, parity: float, ci_low: float, ci_high: float, base_parity: float | None) -> tuple[bool, str]:
        shown = f"parity {parity:.3f} [{ci_low:.3f}–{ci_high:.3f}]"
        if ci_high < self.min_parity:
            return False, f"{shown} below the gate {self.min_parity:.2f}"
        if ci_low < self.min_parity:
            return False, (f"{shown} undecided: the interval spans the gate {self.min_parity:.2f}; more test "
                           "examples (traffic) would decide it")
        if base_parity is not None and parity <= base_parity:
            return False, f"{shown} does not beat the base model's {base_parity:.3f}"
        return True, f"{shown} passes the gate {self.min_parity:.2f}"


async def next_version(store: Store, task: str) -> int:
    return max((s.version for s in await store.list_students(task=task)), default=0) + 1


async def find_trained(store: Store, task: str, dataset_hash: str, trainer: str) -> StudentVersion | None:
    """A version already trained by `trainer` on exactly this dataset (so it need not be trained again)."""
    for student in reversed(await store.list_students(task=task)):
        if student.dataset_hash == dataset_hash and student.trainer == trainer:
            return student
    return None


def served_name(task: str, version: int) -> str:
    """The student's name on the student server (the LoRA adapter name)."""
    return f"{task}-v{version}"


async def register(store: Store, *, task: str, version: int, passed: bool, artifact: str, model: str,
                   base_model: str | None, trainer: str, dataset_hash: str, system_prompt_hash: str | None,
                   threshold: float | None, confidence_method: ConfidenceMethod,
                   details: StudentDetails) -> StudentVersion:
    now = time.time()
    student = StudentVersion(
        task=task, version=version, status="candidate" if passed else "rejected", model=model, created_at=now,
        updated_at=now, base_model=base_model, trainer=trainer, artifact=artifact, dataset_hash=dataset_hash,
        system_prompt_hash=system_prompt_hash, prompt_distilled=system_prompt_hash is not None, threshold=threshold,
        confidence_method=confidence_method, details=details)
    await store.add_student(student)
    return student
