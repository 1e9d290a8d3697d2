"""Rollout ramps: a student's rollout raised step by step while its live parity and fallback rate hold their
floors, rolled back when they break (`decision`: what to do, pure; `controller`: the loop every gateway runs)."""

from gateway.ramp.controller import RampController, RampMove, describe_ramp, gather_evidence, ramp_view
from gateway.ramp.decision import Evidence, RampDecision, decide, format_duration, parse_steps

__all__ = ["Evidence", "RampController", "RampDecision", "RampMove", "decide", "describe_ramp", "format_duration",
           "gather_evidence", "parse_steps", "ramp_view"]
