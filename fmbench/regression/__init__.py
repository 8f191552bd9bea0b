"""Regression alerts: compare a run with the previous successful run of the same benchmark.

`check.check_regressions` is the entry point; it finds the previous run (`history`), compares the
two shard by shard (`compare`, with bootstrap noise intervals from `noise`), and writes
``regression.json``, ``regression.md`` and trend plots (`render`) into the run directory.
"""

from __future__ import annotations

from fmbench.regression.check import check_regressions, pending_trend_plots, read_report, record_trend_plots
from fmbench.regression.compare import compare_metric, compare_runs
from fmbench.regression.history import find_previous_run, is_successful_run, list_run_ids, successful_runs
from fmbench.regression.models import (
    REGRESSION_JSON,
    REGRESSION_MD,
    RULES,
    TREND_PLOTS,
    MetricChange,
    MetricRule,
    RegressionReport,
    Thresholds,
)
from fmbench.regression.noise import bootstrap_diff_ci, bootstrap_rate_ci
from fmbench.regression.render import (
    TREND_SIZE,
    render_markdown,
    store_trend_pngs,
    trend_figures,
    trend_frame,
    write_trend_plots,
)

__all__ = [
    "REGRESSION_JSON",
    "REGRESSION_MD",
    "RULES",
    "TREND_PLOTS",
    "TREND_SIZE",
    "MetricChange",
    "MetricRule",
    "RegressionReport",
    "Thresholds",
    "bootstrap_diff_ci",
    "bootstrap_rate_ci",
    "check_regressions",
    "compare_metric",
    "compare_runs",
    "find_previous_run",
    "is_successful_run",
    "list_run_ids",
    "pending_trend_plots",
    "read_report",
    "record_trend_plots",
    "render_markdown",
    "store_trend_pngs",
    "successful_runs",
    "trend_figures",
    "trend_frame",
    "write_trend_plots",
]
