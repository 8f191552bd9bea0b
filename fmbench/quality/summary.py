"""Quality summaries of a run's evaluation files: per experiment × dataset × bucket, with 95%
intervals (Wilson for exact match and the panel's accuracy, a seeded bootstrap for F1 and ROUGE-L),
judge agreement, and per-judge call statistics (verdicts, faults, latency, tokens, cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from fmbench import storage
from fmbench.quality.evaluate import JUDGE_CALL_SCHEMA, SCORES_SCHEMA, EvaluationOutcome, read_outcome
from fmbench.quality.scores import bootstrap_mean_interval, wilson_interval

#: Columns of the accuracy summary that depend on the chosen accuracy metric.
ACCURACY_METRICS = ("judges", "exact_match", "f1", "rouge_l")


@dataclass
class RunQuality:
    """A run's evaluation: per-request scores, judge calls, and each experiment's outcome."""

    scores: pl.DataFrame
    calls: pl.DataFrame
    outcomes: dict[str, EvaluationOutcome | None] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """One line per experiment whose evaluation is missing or incomplete."""
        lines = []
        for exp, o in self.outcomes.items():
            if o is None:
                lines.append(f"{exp}: not evaluated")
            elif o.status == "failed":
                lines.append(f"{exp}: evaluation failed: {o.error}")
            else:
                lines.extend(f"{exp}: judge {m}" for m in o.missing)
        return lines


def load_quality(run_url: str, experiments: list[str]) -> RunQuality:
    """Read the evaluation files of a run (missing files make empty frames and a None outcome)."""
    scores: list[pl.DataFrame] = []
    calls: list[pl.DataFrame] = []
    outcomes: dict[str, EvaluationOutcome | None] = {}
    for exp in experiments:
        outcomes[exp] = read_outcome(run_url, exp)
        base = storage.join(run_url, "evaluation", exp)
        if outcomes[exp] is not None and outcomes[exp].status != "failed":  # type: ignore[union-attr]
            for name, into in (("scores.parquet", scores), ("judge_calls.parquet", calls)):
                url = storage.join(base, name)
                if storage.exists(url):
                    into.append(storage.read_parquet(url))
    return RunQuality(
        scores=pl.concat(scores, how="vertical") if scores else pl.DataFrame(schema=SCORES_SCHEMA),
        calls=pl.concat(calls, how="vertical") if calls else pl.DataFrame(schema=JUDGE_CALL_SCHEMA),
        outcomes=outcomes)


def _interval_mean(values: list[float], seed: int) -> tuple[float, float, float]:
    if not values:
        return (math.nan, math.nan, math.nan)
    lo, hi = bootstrap_mean_interval(values, seed=seed)
    return (sum(values) / len(values), lo, hi)


def _agreement(calls: pl.DataFrame) -> tuple[float | None, float | None]:
    """(share of judged requests on which every judge gave the same valid verdict, pairwise agreement)."""
    if calls.height == 0:
        return (None, None)
    judges = calls["judge"].n_unique()
    if judges < 2:
        return (None, None)
    unanimous = pairs = agree = requests = 0
    for _, grp in calls.group_by(["shard_id", "request_id", "attempt"]):
        requests += 1
        valid = [v for v in grp["verdict"].to_list() if v in ("correct", "incorrect")]
        if len(valid) == judges and len(set(valid)) == 1:
            unanimous += 1
        for i in range(len(valid)):
            for j in range(i + 1, len(valid)):
                pairs += 1
                agree += valid[i] == valid[j]
    return (unanimous / requests if requests else None, agree / pairs if pairs else None)


def quality_summary(q: RunQuality, metric: str, seed: int = 0) -> pl.DataFrame:
    """One row per experiment × dataset × bucket with scores, intervals and ``accuracy``.

    Args:
        metric: which score is the ``accuracy`` column: ``judges`` (the panel's share correct among
            the requests it decided), ``exact_match``, ``f1`` or ``rouge_l``.
    """
    rows: list[dict[str, Any]] = []
    if q.scores.height == 0:
        return pl.DataFrame(rows)
    for (exp, ds, bucket), grp in q.scores.group_by(["experiment", "dataset", "bucket"], maintain_order=True):
        ref = grp.filter(pl.col("has_reference"))
        n = ref.height
        em_hits = int(ref["exact_match"].sum() or 0) if n else 0
        em_lo, em_hi = wilson_interval(em_hits, n)
        f1, f1_lo, f1_hi = _interval_mean([float(x) for x in ref["f1"].to_list()], seed)
        rl, rl_lo, rl_hi = _interval_mean([float(x) for x in ref["rouge_l"].to_list()], seed)
        judged = grp.filter(pl.col("judged"))
        correct = int((judged["panel_verdict"] == "correct").sum())
        incorrect = int((judged["panel_verdict"] == "incorrect").sum())
        decided = correct + incorrect
        j_lo, j_hi = wilson_interval(correct, decided)
        calls = q.calls.filter((pl.col("experiment") == exp) & (pl.col("dataset") == ds) & (pl.col("bucket") == bucket))
        unanimous, pairwise = _agreement(calls)
        row = {
            "experiment": exp, "dataset": ds, "bucket": bucket, "answers": grp.height, "scored": n,
            "exact_match": em_hits / n if n else None, "exact_match_lo": em_lo if n else None,
            "exact_match_hi": em_hi if n else None,
            "f1": f1 if n else None, "f1_lo": f1_lo if n else None, "f1_hi": f1_hi if n else None,
            "rouge_l": rl if n else None, "rouge_l_lo": rl_lo if n else None, "rouge_l_hi": rl_hi if n else None,
            "judged": judged.height, "judge_correct": correct, "judge_undecided": judged.height - decided,
            "judges": correct / decided if decided else None, "judges_lo": j_lo if decided else None,
            "judges_hi": j_hi if decided else None,
            "judge_unanimous": unanimous, "judge_pairwise_agreement": pairwise,
            "judge_unparseable": int((calls["verdict"] == "unparseable").sum()),
            "judge_errors": int((~calls["ok"]).sum()),
        }
        row["accuracy"], row["accuracy_lo"], row["accuracy_hi"] = (row[metric], row[f"{metric}_lo"],
                                                                   row[f"{metric}_hi"])
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def accuracy_values(q: RunQuality, metric: str) -> pl.DataFrame:
    """Per-request accuracy values whose mean per experiment × dataset × bucket is `quality_summary`'s
    ``accuracy``: 1/0 for each request the panel decided (``judges``), else the score of each
    request with a reference. Columns experiment, dataset, bucket, value."""
    s = q.scores
    if metric == "judges":
        s = s.filter(pl.col("judged") & pl.col("panel_verdict").is_in(["correct", "incorrect"]))
        value = (pl.col("panel_verdict") == "correct").cast(pl.Float64)
    else:
        s = s.filter(pl.col("has_reference"))
        value = pl.col(metric).cast(pl.Float64)
    return s.select("experiment", "dataset", "bucket", value.alias("value")).drop_nulls("value")


def judge_summary(q: RunQuality) -> pl.DataFrame:
    """One row per experiment × judge: calls, verdicts, faults, latency, tokens and cost."""
    if q.calls.height == 0:
        return pl.DataFrame()
    return (q.calls.group_by(["experiment", "judge"], maintain_order=True).agg(
        calls=pl.len(),
        correct=(pl.col("verdict") == "correct").sum(),
        incorrect=(pl.col("verdict") == "incorrect").sum(),
        unparseable=(pl.col("verdict") == "unparseable").sum(),
        errors=(~pl.col("ok")).sum(),
        timeouts=(pl.col("error_kind") == "timeout").sum(),
        latency_p50_s=pl.col("latency_s").filter(pl.col("ok")).median(),
        input_tokens=pl.col("input_tokens").sum(),
        output_tokens=pl.col("output_tokens").sum(),
        cost_usd=pl.when(pl.col("cost_usd").is_null().any()).then(None).otherwise(pl.col("cost_usd").sum()),
    ))


def judge_cost_total(q: RunQuality) -> float | None:
    """What every judge call of the run cost; None when some judge is unpriced (or none was called)."""
    if q.calls.height == 0:
        return None
    if q.calls["cost_usd"].null_count():
        return None
    return float(q.calls["cost_usd"].sum())
