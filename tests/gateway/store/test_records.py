"""The typed records behind `Exchange.extra` and `StudentVersion.details`: the JSON they are stored as, and
how rows written by an older gateway (or by hand) read back."""

from __future__ import annotations

import orjson

from gateway.store import ExchangeExtra, GateResult, ServingPrice, ShadowNote, StudentDetails, StudentNote


def test_the_stored_keys_are_the_field_names_and_unset_ones_are_left_out() -> None:
    extra = ExchangeExtra(student=StudentNote(version=2, confidence=-0.25, reason="low_confidence", cost_usd=1e-5),
                          counterfactual_cost_usd=0.002)
    assert extra.to_json() == {"student": {"version": 2, "confidence": -0.25, "reason": "low_confidence",
                                           "cost_usd": 1e-5}, "counterfactual_cost_usd": 0.002}
    assert ExchangeExtra().to_json() == {}
    assert ExchangeExtra(shadow=ShadowNote(3, 0.5)).to_json() == {"shadow": {"version": 3, "agreement": 0.5}}


def test_records_survive_a_json_round_trip() -> None:
    answer = {"role": "assistant", "content": "{"}
    extra = ExchangeExtra(student=StudentNote(1, "m-v1", -0.1, "invalid_json", "Expecting value", answer, 3e-6),
                          shadow=ShadowNote(1, 1.0), counterfactual_cost_usd=0.01, teacher_error="upstream 503")
    assert ExchangeExtra.from_json(orjson.loads(orjson.dumps(extra.to_json()))) == extra
    details = StudentDetails(evaluation={"student": {"score": {"mean": 0.91}}}, calibration={"method": "min_logprob"},
                             gate=GateResult(False, "parity 0.91 below the gate 0.95", 0.95),
                             trainer_config={"r": 8}, job={"job_id": "j"}, metrics={"steps": 4},
                             curation={"kept": 40}, run_dir="/runs/2", training_s=61.5, training_cost_usd=0.4,
                             serving_price=ServingPrice(3e-7, 1.2e-6, "list price (ft:gpt-4o-mini-2024-07-18 …)"))
    assert StudentDetails.from_json(orjson.loads(orjson.dumps(details.to_json()))) == details
    assert details.offline_parity == 0.91 and details.min_parity == 0.95


def test_an_older_row_reads_as_typed_fields() -> None:
    # as the gateway wrote a student row before the records were typed
    stored = {"student": {"version": 1, "confidence": -0.31, "reason": None}, "counterfactual_cost_usd": 0.002}
    assert ExchangeExtra.from_json(stored) == ExchangeExtra(StudentNote(version=1, confidence=-0.31),
                                                            counterfactual_cost_usd=0.002)


def test_values_of_another_type_read_as_unset() -> None:
    extra = ExchangeExtra.from_json({"student": {"version": True, "confidence": "high", "cost_usd": [1]},
                                     "shadow": {"version": 1, "agreement": "all"}, "counterfactual_cost_usd": "0.1",
                                     "unknown": 1})
    assert extra == ExchangeExtra(student=StudentNote())
    assert ExchangeExtra.from_json(None) == ExchangeExtra() and ExchangeExtra.from_json([1]) == ExchangeExtra()
    details = StudentDetails.from_json({"evaluation": {"student": {"score": {"mean": "0.9"}}}, "gate": "passed",
                                        "training_s": False, "training_cost_usd": 2})
    assert details.offline_parity is None and details.gate is None and details.min_parity is None
    assert details.training_s is None and details.training_cost_usd == 2.0
    # a price without its source (or with a price that is not a number) is no price
    assert StudentDetails.from_json({"serving_price": {"input_per_token": 1e-7, "output_per_token": 1e-7}}) \
        == StudentDetails.from_json({"serving_price": {"input_per_token": "1e-7", "output_per_token": 1e-7,
                                                       "source": "x"}}) == StudentDetails()
    assert StudentDetails.from_json("x") == StudentDetails()
