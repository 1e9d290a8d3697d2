"""Too little data to decide on: what is missing and why traffic was dropped, from a real curation."""

from __future__ import annotations

import dataclasses

import pytest

from distiller.dataset import CurationConfig, curate
from distiller.sufficiency import Minimums, shortfall
from tests.distiller.conftest import make_exchange


def capped(i: int) -> object:
    """An answer the teacher cut at max_tokens=64."""
    exchange = make_exchange(i, finish_reason="length")
    return dataclasses.replace(exchange, request={**exchange.request, "params": {"max_tokens": 64}})


def test_truncated_traffic_is_named_with_its_limit_and_the_way_out() -> None:
    exchanges = [capped(i) for i in range(78)] + [make_exchange(100 + i) for i in range(37)] + [
        make_exchange(200 + i, answer="I'm sorry, but I can't help with that.") for i in range(5)]
    dataset = curate(exchanges)  # type: ignore[arg-type]
    reasons = shortfall(dataset.report, Minimums())
    assert reasons[0].startswith("train: ") and reasons[0].endswith("at least 30 needed")
    assert "78 of 120 answers were cut at max_tokens=64: raise max_tokens for this task, or keep truncated " \
           "answers with --keep-truncated" in reasons
    assert "5 of 120 answers were refusals" in reasons
    assert reasons[-1] == "37 of 120 captured exchanges were kept; capture more traffic for this task"

    kept = curate(exchanges, CurationConfig(keep_truncated=True))  # type: ignore[arg-type]
    assert kept.report["kept"] == 115 and kept.report["dropped"]["truncated"] == 0


def test_enough_data_has_no_shortfall() -> None:
    dataset = curate([make_exchange(i) for i in range(400)])
    assert shortfall(dataset.report, Minimums()) == []
    assert shortfall(dataset.report, Minimums(train=10_000))[0].startswith("train: ")


def test_minimums_are_positive() -> None:
    with pytest.raises(ValueError):
        Minimums(test=0)
