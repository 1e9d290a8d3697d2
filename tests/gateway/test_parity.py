"""Live parity: one definition over the comparisons a reader has."""

from __future__ import annotations

import pytest

from gateway.parity import LiveParity, live_parity
from gateway.store import Exchange, ExchangeExtra, ShadowNote, StudentNote


def row(i: int, at: float, route: str, extra: ExchangeExtra) -> Exchange:
    return Exchange(request_id=f"r{i}", created_at=at, task="t", task_source="header", route=route, model="m",
                    upstream_model="m", status="ok", http_status=200, stream=False, request={}, extra=extra)


def test_the_mean_agreement_of_a_versions_shadow_rows() -> None:
    rows = [row(1, 10.0, "shadow", ExchangeExtra(shadow=ShadowNote(1, 1.0))),
            row(2, 20.0, "shadow", ExchangeExtra(shadow=ShadowNote(1, 0.0))),
            row(3, 30.0, "shadow", ExchangeExtra(shadow=ShadowNote(1, 0.5))),
            row(4, 30.0, "shadow", ExchangeExtra(shadow=ShadowNote(2, 0.25))),  # another version
            row(5, 30.0, "student", ExchangeExtra(student=StudentNote(version=1))),  # not a comparison
            row(6, 30.0, "teacher", ExchangeExtra(shadow=ShadowNote(1, 0.0)))]  # only shadow rows count
    every = live_parity(rows, 1)
    assert (every.comparisons, every.mean) == (3, pytest.approx(0.5))
    recent = live_parity(rows, 1, since=10.0)  # strictly after
    assert (recent.comparisons, recent.mean) == (2, pytest.approx(0.25))
    assert live_parity(rows, 2).mean == 0.25
    assert live_parity(rows, 3) == LiveParity() and LiveParity().mean is None


def test_a_running_tally_gives_the_same_mean() -> None:
    tally = LiveParity()
    for agreement in (1.0, 0.0, 0.5):
        tally.add(agreement)
    rows = [row(i, float(i), "shadow", ExchangeExtra(shadow=ShadowNote(1, a))) for i, a in enumerate((1.0, 0.0, 0.5))]
    assert tally == live_parity(rows, 1)
