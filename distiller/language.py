"""A light language guess for balance reporting and per-language caps: script first, then stopwords.

Standard library only and deliberately rough: it answers "is this task's traffic mostly Turkish?"
and "does one language crowd out the rest?", not per-sentence identification. Scripts used by one
language (Greek, Hangul, kana, ...) decide alone; Latin and Cyrillic text is scored by common
function words and letters particular to each language. Anything unclear is "und" (undetermined,
as in BCP 47).
"""

from __future__ import annotations

import re

UNDETERMINED = "und"

_SCRIPTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("latin", re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]")),
    ("cyrillic", re.compile(r"[\u0400-\u04ff]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
    ("ko", re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")),
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# (function words, letters hardly used by the other candidates of the same script)
_LATIN: dict[str, tuple[frozenset[str], str]] = {
    "en": (_words("the and is are of to in that it for with what you this how be on not was can please my "
                  "your do does i"), ""),
    "tr": (_words("ve bir bu için ile da de ne mi mı mu çok daha gibi olan ama nasıl değil var yok ben sen "
                  "lütfen şu bana neden nedir"), "ığş\u0307"),  # İ lowers to i + U+0307
    "de": (_words("der die das und ist nicht ein eine ich sie mit zu den von auf für es wie bitte auch "
                  "dem ist sind wir was"), "ßä"),
    "fr": (_words("le la les et est un une des je vous pas que qui dans pour du avec ce sur il comment "
                  "mais au sont de quel quelle où"), "èêàœùâîç"),
    "es": (_words("el la los las y es un una que de en por para con no se del cómo qué está son pero "
                  "muy al cuál dónde"), "ñ¿¡áíóú"),
}
_CYRILLIC: dict[str, tuple[frozenset[str], str]] = {
    "uk": (_words("і й та що це як для або але ви ми він вона вони цей ця мені дуже чи від до будь ласка "
                  "не на з у в я яка який де хто коли є"), "іїєґ"),
    "ru": (_words("и что это как для или но вы мы он она они этот мне очень ли от до пожалуйста не на с "
                  "у в я какая какой где кто когда есть"), "ыэъё"),
}
_WORD = re.compile(r"[^\W\d_]+")


def detect_language(text: str) -> str:
    """An ISO 639-1 code (en, tr, uk, de, fr, es, ru, el, ar, he, hi, th, ko, ja, zh) or "und"."""
    counts = {script: len(pattern.findall(text)) for script, pattern in _SCRIPTS}
    if counts["ja"] and counts["zh"]:  # Japanese mixes kana into Han text
        counts["ja"] += counts.pop("zh")
    script, letters = max(counts.items(), key=lambda item: item[1])
    if letters == 0:
        return UNDETERMINED
    if script == "latin":
        return _score(text, _LATIN)
    if script == "cyrillic":
        return _score(text, _CYRILLIC)
    return script


def _score(text: str, candidates: dict[str, tuple[frozenset[str], str]]) -> str:
    """The candidate with most function words (plus half a point per distinctive letter); "und" on no
    evidence or a tie."""
    lowered = text.lower()
    words = _WORD.findall(lowered)
    scores = {}
    for language, (stopwords, letters) in candidates.items():
        distinctive = sum(lowered.count(ch) for ch in letters)
        scores[language] = sum(word in stopwords for word in words) + 0.5 * distinctive
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    if ranked[0][1] <= 0 or ranked[0][1] == ranked[1][1]:
        return UNDETERMINED
    return ranked[0][0]
