"""The quality gate decides on the interval of the student's parity, not on its point."""

from __future__ import annotations

from distiller.registry import Gate


def test_the_interval_must_clear_the_gate() -> None:
    gate = Gate(0.90)
    assert gate.check(0.97, 0.93, 1.0, base_parity=0.4) == (True, "parity 0.970 [0.930–1.000] passes the gate 0.90")
    below = gate.check(0.62, 0.50, 0.74, base_parity=None)
    assert below == (False, "parity 0.620 [0.500–0.740] below the gate 0.90")
    # a point above the gate on too few examples: undecided, not passed
    passed, message = gate.check(0.93, 0.80, 1.0, base_parity=None)
    assert not passed and "undecided" in message and "more test examples" in message
    passed, message = gate.check(0.95, 0.91, 0.99, base_parity=0.96)
    assert not passed and "does not beat the base model's 0.960" in message
