"""Reference-answer scores of one completion (exact match, token F1, ROUGE-L) and their intervals.

Texts are compared after LongBench's normalisation (lowercase, punctuation and the articles
a/an/the removed, whitespace collapsed); a completion is scored against the reference it matches
best. Summaries carry 95% intervals: Wilson's for proportions, a seeded percentile bootstrap for
means of scores in [0, 1].
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
#: z of a two-sided 95% interval.
Z95 = 1.959963984540054


def normalize_answer(text: str) -> str:
    """LongBench's answer normalisation: lowercase, drop punctuation and articles, collapse spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(candidate: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalize_answer(candidate) == normalize_answer(reference))


def token_f1(candidate: str, reference: str) -> float:
    """F1 of the normalised tokens in common (SQuAD/LongBench ``qa_f1_score``)."""
    cand, ref = normalize_answer(candidate).split(), normalize_answer(reference).split()
    if not cand or not ref:
        return float(cand == ref)
    common = sum((Counter(cand) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(cand), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    # One row of the dynamic programme at a time: answers are short, references too.
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of normalised tokens, beta = 1)."""
    cand, ref = normalize_answer(candidate).split(), normalize_answer(reference).split()
    if not cand or not ref:
        return float(cand == ref)
    lcs = _lcs(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True, slots=True)
class AnswerScores:
    """One completion's scores against its best-matching reference (each metric's own best)."""

    exact_match: float
    f1: float
    rouge_l: float


def score_answer(candidate: str, references: Sequence[str]) -> AnswerScores | None:
    """Score a completion against every reference and keep each metric's best.

    Returns:
        None when there is no reference to score against.
    """
    refs = [r for r in references if r is not None]
    if not refs:
        return None
    return AnswerScores(
        exact_match=max(exact_match(candidate, r) for r in refs),
        f1=max(token_f1(candidate, r) for r in refs),
        rouge_l=max(rouge_l(candidate, r) for r in refs),
    )


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (stays inside [0, 1], sensible at 0 and n).

    Returns:
        (low, high); (nan, nan) when ``n`` is 0.
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_mean_interval(values: Sequence[float], *, resamples: int = 1000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (seeded, so a report renders the same twice).

    Returns:
        (low, high); (nan, nan) for no values; the value itself for one value.
    """
    n = len(values)
    if n == 0:
        return (math.nan, math.nan)
    if n == 1 or min(values) == max(values):
        return (float(values[0]), float(values[0])) if n == 1 else (float(min(values)), float(min(values)))
    rng = random.Random(seed)
    vals = list(values)
    means = sorted(sum(rng.choices(vals, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    lo = means[math.floor(tail * (resamples - 1))]
    hi = means[math.ceil((1 - tail) * (resamples - 1))]
    return (lo, hi)
