"""Exact and near duplicates: found, oldest kept, the same answer every run."""

from __future__ import annotations

import random

from distiller.dedup import (
    Duplicate,
    MinHasher,
    estimated_jaccard,
    exact_key,
    find_duplicates,
    jaccard,
    lsh_shape,
    normalise_text,
    shingles,
)


def paragraph(rng: random.Random, words: int = 60) -> str:
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(words))


def test_normalisation_ignores_width_case_and_whitespace() -> None:
    assert normalise_text("  Ｈｅｌｌｏ\t\nWORLD  ") == "hello world"
    assert normalise_text("Cafe\u0301") == normalise_text("Café")  # combining accent vs precomposed
    assert exact_key("Hello   world") == exact_key("hello world\n")
    assert exact_key("hello world") != exact_key("hello there")


def test_exact_duplicates_keep_the_first() -> None:
    texts = ["user: What is 2+2?\nassistant: 4", "USER:  what is 2+2?\nassistant:   4",
             "user: What is 3+3?\nassistant: 6"]
    assert find_duplicates(texts) == [None, Duplicate("duplicate", 0, 1.0), None]
    assert find_duplicates(texts, threshold=None) == [None, Duplicate("duplicate", 0, 1.0), None]


def test_near_duplicates_above_the_threshold_are_found() -> None:
    rng = random.Random(7)
    base = paragraph(rng)
    words = base.split()
    one_word_changed = " ".join([*words[:30], "CHANGED", *words[31:]])
    unrelated = paragraph(rng)
    result = find_duplicates([base, unrelated, one_word_changed])
    assert result[0] is None and result[1] is None
    assert result[2] is not None and result[2].reason == "near_duplicate" and result[2].of == 0
    assert result[2].similarity == jaccard(shingles(base), shingles(one_word_changed)) >= 0.9
    assert find_duplicates([base, one_word_changed], threshold=0.95) == [None, None]
    assert find_duplicates([base, one_word_changed], threshold=None) == [None, None]


def test_many_texts_are_compared_against_kept_ones_only() -> None:
    rng = random.Random(3)
    originals = [paragraph(rng) for _ in range(200)]
    variants = [" ".join([*text.split()[:-1], "tail"]) for text in originals[:50]]
    result = find_duplicates(originals + variants)
    assert result[:200] == [None] * 200
    assert [(d.reason, d.of) if d else None for d in result[200:]] == [("near_duplicate", i) for i in range(50)]
    assert find_duplicates(originals + variants) == result  # deterministic


def test_char_shingles_work_without_spaces() -> None:
    a = "東京都渋谷区の天気予報を教えてください。明日は雨が降りますか？傘は必要ですか？"
    b = a.replace("明日", "今日")
    assert len(shingles(a, "word")) == 1  # one "word": word shingles cannot see the similarity
    assert find_duplicates([a, b], shingling="char", threshold=0.7)[1] is not None
    assert find_duplicates([a, b], shingling="word", threshold=0.7)[1] is None


def test_minhash_is_seeded_and_estimates_jaccard() -> None:
    rng = random.Random(11)
    a = shingles(paragraph(rng, 200))
    b = set(list(a)[:150]) | shingles(paragraph(rng, 50))
    sig_a, sig_b = MinHasher(128, seed=1).signature(a), MinHasher(128, seed=1).signature(b)
    assert sig_a == MinHasher(128, seed=1).signature(a)
    assert sig_a != MinHasher(128, seed=2).signature(a)
    assert abs(estimated_jaccard(sig_a, sig_b) - jaccard(a, b)) < 0.15
    assert len(MinHasher(64).signature(set())) == 64


def test_lsh_shape_keeps_pairs_at_the_threshold() -> None:
    bands, rows = lsh_shape(128, 0.9)
    assert (bands, rows) == (16, 8)
    assert 1 - (1 - 0.9**rows) ** bands > 0.99
    assert lsh_shape(64, 0.9) == (16, 4)
