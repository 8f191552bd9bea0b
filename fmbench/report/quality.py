"""The report's answer-quality part: accuracy and judge tables, the quality-vs-cost plot, the
judges' cost rows, and the accuracy columns the recommendation reads (``slo.min_accuracy``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
import polars as pl

from fmbench.config import BenchmarkConfig
from fmbench.deploy import judge_label
from fmbench.quality.summary import judge_cost_total, judge_summary, load_quality, quality_summary
from fmbench.report.figures import Figure, colour_map, new_figure
from fmbench.report.tables import fmt_int, fmt_usd

_METRIC_LABELS = {"judges": "judge-panel accuracy", "exact_match": "exact match", "f1": "token F1",
                  "rouge_l": "ROUGE-L"}


@dataclass
class QualityView:
    """What the report shows about answer quality."""

    metric: str
    metric_label: str
    accuracy_rows: list[dict[str, str]]
    judge_rows: list[dict[str, str]]
    missing: list[str]
    summary: pl.DataFrame
    judge_cost_usd: float | None
    judge_cost_rows: list[dict[str, Any]] = field(default_factory=list)
    min_accuracy: float | None = None


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * 100:.1f}%"


def _ci(row: dict[str, Any], col: str) -> str:
    v = row.get(col)
    if v is None:
        return "–"
    return f"{_pct(v)} [{_pct(row.get(f'{col}_lo'))}, {_pct(row.get(f'{col}_hi'))}]"


def quality_view(run_url: str, cfg: BenchmarkConfig) -> QualityView | None:
    """The quality part of a run's report, or None when the config evaluates nothing."""
    from fmbench.quality.finished import stored_settings

    ev, min_accuracy = cfg.evaluation, cfg.slo.min_accuracy
    stored = stored_settings(run_url)  # `fmbench evaluate` may have evaluated with other settings
    if stored is not None:
        ev, min_accuracy = stored
    if ev is None:
        return None
    q = load_quality(run_url, [e.name for e in cfg.experiments])
    metric = ev.accuracy_metric
    summary = quality_summary(q, metric, seed=ev.seed)
    rows = []
    for r in summary.iter_rows(named=True):
        row = {"Experiment": r["experiment"], "Dataset": r["dataset"], "Bucket": r["bucket"],
               "Answers scored": fmt_int(r["scored"]), "Exact match [95% CI]": _ci(r, "exact_match"),
               "Token F1 [95% CI]": _ci(r, "f1"), "ROUGE-L [95% CI]": _ci(r, "rouge_l")}
        if ev.judges:
            row.update({
                "Judged": fmt_int(r["judged"]), "Judges: correct [95% CI]": _ci(r, "judges"),
                "Undecided": fmt_int(r["judge_undecided"]),
                "Judges unanimous": _pct(r["judge_unanimous"]),
                "Pairwise agreement": _pct(r["judge_pairwise_agreement"]),
                "Unparseable verdicts": fmt_int(r["judge_unparseable"]), "Judge errors": fmt_int(r["judge_errors"]),
            })
        rows.append(row)
    jrows = []
    for r in judge_summary(q).iter_rows(named=True):
        jrows.append({"Experiment": r["experiment"], "Judge": r["judge"], "Calls": fmt_int(r["calls"]),
                      "Correct": fmt_int(r["correct"]), "Incorrect": fmt_int(r["incorrect"]),
                      "Unparseable": fmt_int(r["unparseable"]), "Errors": fmt_int(r["errors"]),
                      "Timeouts": fmt_int(r["timeouts"]),
                      "Latency p50": "–" if r["latency_p50_s"] is None else f"{r['latency_p50_s']:.2f} s",
                      "Tokens in/out": f"{fmt_int(r['input_tokens'])} / {fmt_int(r['output_tokens'])}",
                      "Cost": fmt_usd(r["cost_usd"])})
    cost_rows = []
    if q.calls.height:
        for (judge,), grp in q.calls.group_by(["judge"], maintain_order=True):
            known = grp["cost_usd"].null_count() == 0
            cost_rows.append({"experiment": judge_label(str(judge)), "requests": grp.height,
                              "cost_usd": float(grp["cost_usd"].sum()) if known else None,
                              "basis": "judge calls: their tokens at token prices, or, priced by the hour, the hours "
                              "the judge was answering (an endpoint the run did not deploy)"
                              if known else "judge not priced"})
    return QualityView(metric=metric, metric_label=_METRIC_LABELS[metric], accuracy_rows=rows, judge_rows=jrows,
                       missing=q.missing, summary=summary, judge_cost_usd=judge_cost_total(q),
                       judge_cost_rows=cost_rows, min_accuracy=min_accuracy)


def with_accuracy(metrics: pl.DataFrame, view: QualityView | None) -> pl.DataFrame:
    """Per-shard metrics with the accuracy of their experiment × dataset × bucket (null: not evaluated)."""
    cols = ["accuracy", "accuracy_lo", "accuracy_hi"]
    metrics = metrics.drop([c for c in cols if c in metrics.columns])
    if view is None or view.summary.is_empty() or metrics.is_empty():
        return metrics.with_columns([pl.lit(None, dtype=pl.Float64).alias(c) for c in cols])
    acc = view.summary.select(["experiment", "dataset", "bucket", *cols]).with_columns(
        [pl.col(c).cast(pl.Float64) for c in cols])
    return metrics.join(acc, on=["experiment", "dataset", "bucket"], how="left")


def quality_figure(metrics: pl.DataFrame, view: QualityView, colours: dict[str, str] | None = None) -> Figure | None:
    """Accuracy (with its 95% interval) against the lowest cost per 10k transactions, one point per
    experiment × dataset × bucket."""
    m = with_accuracy(metrics, view).filter(pl.col("accuracy").is_not_null()
                                            & pl.col("cost_per_10k_txn").is_not_null())
    if m.is_empty():
        return None
    colours = colours or colour_map(m["experiment"].to_list())
    pts = m.group_by(["experiment", "dataset", "bucket"], maintain_order=True).agg(
        cost=pl.col("cost_per_10k_txn").min(), acc=pl.col("accuracy").first(),
        lo=pl.col("accuracy_lo").first(), hi=pl.col("accuracy_hi").first())
    fig = new_figure()
    for (exp,), grp in pts.group_by(["experiment"], maintain_order=True):
        acc = [a * 100 for a in grp["acc"].to_list()]
        fig.add_trace(go.Scatter(
            x=grp["cost"].to_list(), y=acc, mode="markers", name=str(exp),
            marker={"size": 11, "color": colours.get(str(exp))},
            text=[f"{d} / {b}" for d, b in zip(grp["dataset"].to_list(), grp["bucket"].to_list())],
            error_y={"type": "data", "symmetric": False,
                     "array": [(h or a / 100) * 100 - a for h, a in zip(grp["hi"].to_list(), acc)],
                     "arrayminus": [a - (lo or a / 100) * 100 for lo, a in zip(grp["lo"].to_list(), acc)]},
        ))
    if view.min_accuracy is not None:
        fig.add_hline(y=view.min_accuracy * 100, line_dash="dash",
                      annotation_text=f"min accuracy {view.min_accuracy:.0%}")
    fig.update_layout(width=1100, height=600,
                      xaxis_title="lowest cost per 10k transactions (USD)",
                      yaxis_title=f"{view.metric_label} (%)", yaxis_range=[0, 105])
    return Figure(stem="quality_vs_cost", title="Answer quality vs cost",
                  caption=f"{view.metric_label.capitalize()} with its 95% interval against the lowest cost per 10k "
                  "transactions of each experiment, dataset and bucket; up and to the left is better.",
                  figure=fig)
