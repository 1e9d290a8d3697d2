"""The language heuristic: scripts decide alone, Latin and Cyrillic go by function words."""

from __future__ import annotations

import pytest

from distiller.language import detect_language


@pytest.mark.parametrize(("text", "language"), [
    ("What is the capital of France?", "en"),
    ("Fransa'nın başkenti neresidir?", "tr"),
    ("Merhaba, nasılsın?", "tr"),
    ("Sipariş numaram 12345, kargo nerede?", "tr"),
    ("Яка столиця Франції?", "uk"),
    ("Привіт", "uk"),
    ("Какая столица Франции?", "ru"),
    ("Was ist die Hauptstadt von Frankreich?", "de"),
    ("Quelle est la capitale de la France ?", "fr"),
    ("¿Cuál es la capital de Francia?", "es"),
    ("Καλημέρα κόσμε", "el"),
    ("こんにちは世界", "ja"),
    ("你好世界", "zh"),
    ("안녕하세요", "ko"),
    ("مرحبا بالعالم", "ar"),
])
def test_detects(text: str, language: str) -> None:
    assert detect_language(text) == language


@pytest.mark.parametrize("text", ["", "12345 67", "Paris", "OK", "???"])
def test_no_evidence_is_undetermined(text: str) -> None:
    assert detect_language(text) == "und"
