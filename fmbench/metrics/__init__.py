"""Metrics: per-request records -> per-shard summaries, cost, SLO verdicts and recommendations.

Everything is computed with polars from ``requests.parquet`` rows (`fmbench.records.REQUEST_SCHEMA`);
definitions are in `fmbench.metrics.summary`, `fmbench.metrics.cost` and `fmbench.metrics.slo`.
"""

from __future__ import annotations

from fmbench.metrics.cost import attach_costs, benchmark_cost, experiment_pricing
from fmbench.metrics.recommend import Choice, Recommendation, recommend
from fmbench.metrics.slo import SLOCheck, evaluate_slo, slo_checks
from fmbench.metrics.summary import (
    METRIC_COLUMNS,
    PERCENTILES,
    SHARD_KEYS,
    error_counts,
    good_request,
    percentile,
    summarize,
)

__all__ = [
    "METRIC_COLUMNS",
    "PERCENTILES",
    "SHARD_KEYS",
    "Choice",
    "Recommendation",
    "SLOCheck",
    "attach_costs",
    "benchmark_cost",
    "error_counts",
    "evaluate_slo",
    "experiment_pricing",
    "good_request",
    "percentile",
    "recommend",
    "slo_checks",
    "summarize",
]
