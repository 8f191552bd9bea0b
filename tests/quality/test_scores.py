"""Reference-answer scores on known strings, and their confidence intervals."""

from __future__ import annotations

import math
import random

import pytest

from fmbench.quality.scores import (
    bootstrap_mean_interval,
    exact_match,
    normalize_answer,
    rouge_l,
    score_answer,
    token_f1,
    wilson_interval,
)


def test_normalisation_is_longbench_s() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("An apple, a pear; the END.") == "apple pear end"
    # "a" inside a word is not an article
    assert normalize_answer("Banana") == "banana"


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_token_f1_on_known_strings() -> None:
    # candidate 3 tokens, reference 2, 2 in common: p = 2/3, r = 1, F1 = 0.8
    assert token_f1("Paris in France", "Paris France") == pytest.approx(0.8)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("", "Paris") == 0.0


def test_rouge_l_on_known_strings() -> None:
    # LCS of "a b c d e" (articles dropped: "b c d e") and "b x d e" is "b d e": p = 3/4, r = 3/4
    assert rouge_l("b c d e", "b x d e") == pytest.approx(0.75)
    # order matters for ROUGE-L but not for F1
    assert rouge_l("tower eiffel", "eiffel tower") == pytest.approx(0.5)
    assert token_f1("tower eiffel", "eiffel tower") == pytest.approx(1.0)


def test_best_matching_reference_is_used() -> None:
    s = score_answer("Barack Obama", ["Obama", "Barack Obama", "the president"])
    assert s is not None
    assert s.exact_match == 1.0 and s.f1 == 1.0 and s.rouge_l == 1.0
    partial = score_answer("Obama was president", ["Barack Obama", "Michelle"])
    assert partial is not None and partial.exact_match == 0.0
    assert partial.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert score_answer("anything", []) is None


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_wilson_interval_covers_the_true_proportion_about_95_percent() -> None:
    rng = random.Random(7)
    p, n, trials = 0.3, 80, 400
    covered = 0
    for _ in range(trials):
        k = sum(rng.random() < p for _ in range(n))
        lo, hi = wilson_interval(k, n)
        covered += lo <= p <= hi
    assert 0.90 <= covered / trials <= 0.99


def test_bootstrap_interval_brackets_the_mean_and_is_seeded() -> None:
    values = [0.0, 0.5, 1.0, 0.25, 0.75] * 8
    lo, hi = bootstrap_mean_interval(values, seed=3)
    assert lo < sum(values) / len(values) < hi
    assert (lo, hi) == bootstrap_mean_interval(values, seed=3)
    assert bootstrap_mean_interval([0.4]) == (0.4, 0.4)
