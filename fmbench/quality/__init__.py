"""Answer quality beside speed and cost: reference-answer scores, an LLM-judge panel, summaries.

Entry points: `evaluate_experiment` (one experiment of a run, after its shards), `load_quality` and
`quality_summary` (what the report shows), and the score functions in `fmbench.quality.scores`.
"""

from __future__ import annotations

from fmbench.quality.evaluate import (
    EvaluationOutcome,
    evaluate_experiment,
    failed_evaluation,
    finished_evaluation,
)
from fmbench.quality.judge import majority_vote, parse_verdict, render_judge_prompt
from fmbench.quality.scores import (
    exact_match,
    normalize_answer,
    rouge_l,
    score_answer,
    token_f1,
    wilson_interval,
)
from fmbench.quality.summary import RunQuality, judge_summary, load_quality, quality_summary

__all__ = [
    "EvaluationOutcome",
    "RunQuality",
    "evaluate_experiment",
    "exact_match",
    "failed_evaluation",
    "finished_evaluation",
    "judge_summary",
    "load_quality",
    "majority_vote",
    "normalize_answer",
    "parse_verdict",
    "quality_summary",
    "render_judge_prompt",
    "rouge_l",
    "score_answer",
    "token_f1",
    "wilson_interval",
]
