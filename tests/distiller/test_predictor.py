"""Fitting the pre-generation predictor: it learns what the outcomes show, keeps the accepted requests it was
fitted on, and is turned on only when the held-out outcomes show it helps."""

from __future__ import annotations

import random

from distiller.predictor import Rules, fit_predictor, vocabulary
from gateway.chat.predictor import FEATURES, AcceptancePredictor

CITIES = ["Hanoi", "Krakow", "Lima", "Porto", "Quito", "Lagos", "Bogota", "Kyiv"]
PRODUCTS = ["monitor", "printer", "bicycle", "sofa", "blender", "camera", "keyboard"]


def ticket(rng: random.Random) -> list[dict[str, str]]:
    text = (f"Hi, my order {rng.randint(10000, 99999)} of the {rng.choice(PRODUCTS)} to {rng.choice(CITIES)} "
            f"arrived {rng.choice(['damaged', 'late', 'wrong'])}.")
    return [{"role": "system", "content": "Extract the order."}, {"role": "user", "content": text}]


def unusual(rng: random.Random) -> list[dict[str, str]]:
    text = rng.choice(["Guten Tag, meine Bestellung ist beschädigt angekommen, bitte helfen Sie mir schnell.",
                       "Olá, a minha encomenda nunca chegou à minha casa em São Paulo, o que faço?",
                       "asdkj qwpoe zzxq 1234 !!! ??? lkjw",
                       "ご注文の商品が届きません。確認してください。"])
    return [{"role": "system", "content": "Extract the order."}, {"role": "user", "content": text}]


def outcomes(seed: int, n: int, failed_share: float) -> list[tuple[list[dict[str, str]], bool]]:
    rng = random.Random(seed)
    return [(unusual(rng), False) if rng.random() < failed_share else (ticket(rng), True) for _ in range(n)]


def test_it_learns_to_skip_what_the_student_fails_and_is_turned_on_when_that_holds_out() -> None:
    train = [ticket(random.Random(i)) for i in range(100)]
    predictor, report = fit_predictor(train, outcomes(1, 80, 0.25), outcomes(2, 60, 0.25))
    assert predictor is not None and predictor.enabled and report["enabled"]
    test = report["test"]
    assert test["skipped_rejected_share"] >= 0.9 and test["lost_accepted_share"] <= 0.05, report
    assert report["validation"]["lost_accepted_share"] <= Rules().max_lost
    # it travels as JSON in the version's details and reads back the same
    again = AcceptancePredictor.from_json(predictor.to_json())
    assert again == predictor and report["features"] == list(FEATURES)
    assert predictor.skips(unusual(random.Random(3))) and not predictor.skips(ticket(random.Random(4)))


def test_it_stays_off_unless_the_test_split_shows_enough_to_gain() -> None:
    train = [ticket(random.Random(i)) for i in range(100)]
    predictor, report = fit_predictor(train, outcomes(1, 80, 0.25), outcomes(2, 60, 0.02))  # 1-2 failed: too few
    assert predictor is not None and not predictor.enabled and report["reason"].startswith("off:")
    noise = [(ticket(random.Random(i)), i % 3 != 0) for i in range(60)]  # failures the request cannot tell
    predictor, report = fit_predictor(train, noise, [(ticket(random.Random(i + 99)), i % 3 != 0) for i in range(60)])
    assert predictor is not None and not predictor.enabled
    assert fit_predictor(train, [(ticket(random.Random(i)), True) for i in range(40)], [])[0] is None


def test_vocabulary_and_garbage_records() -> None:
    assert "krakow" in vocabulary([ticket(random.Random(i)) for i in range(30)])
    assert AcceptancePredictor.from_json({"features": ["other"]}) is None
    assert AcceptancePredictor.from_json({"features": list(FEATURES), "means": [0] * 6, "scales": [0] * 6}) is None
    assert AcceptancePredictor.from_json("nonsense") is None
