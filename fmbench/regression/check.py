"""The regression check of a finished run: compare it with the previous one and write the results.

Writes into the run directory (local or ``s3://``): ``regression.json`` (`RegressionReport`),
``regression.md`` (a "Changes since <run>" section for report.md) and ``plots/trend_*.png``.
A benchmark run leaves the trend plots to its report (`pending_trend_plots`, `record_trend_plots`),
which exports them with its own figures in one browser.
"""

from __future__ import annotations

import logging
from typing import Any

from fmbench import storage
from fmbench.regression.compare import compare_runs, empty_report
from fmbench.regression.history import find_previous_run, split_run_url, successful_runs
from fmbench.regression.models import REGRESSION_JSON, REGRESSION_MD, RegressionReport, Thresholds
from fmbench.regression.render import render_markdown, trend_figures, write_trend_plots

log = logging.getLogger("fmbench")


def check_regressions(run_url: str, thresholds: Thresholds | None = None, *, trend_runs: int = 10,
                      n_resamples: int = 400, confidence: float = 0.95, seed: int = 0,
                      plots: bool = True) -> RegressionReport:
    """Compare a finished run with the previous successful run and write the results into it.

    Writes regression.json, regression.md and (``plots=True``) the trend plots over the last
    ``trend_runs`` successful runs, this one included. Without a previous run the files still
    say so. A failing plot renderer is logged and recorded in ``plot_error``; it fails nothing.

    Args:
        run_url: the run directory (local path or s3:// URL) with metrics.parquet written.
        thresholds: relative thresholds per metric (default 10% each).
        trend_runs: how many runs the trend plots show.
        n_resamples, confidence, seed: the bootstrap of the per-request data.
        plots: render the trend plots now, within the PNG deadline (needs kaleido and Chromium,
            BROWSER_PATH). A benchmark run passes False and its report renders them
            (`pending_trend_plots`), so that one browser exports every PNG of the run.

    Returns:
        The `RegressionReport`; ``status`` is "regressed" when anything regressed.

    Raises:
        StorageError: the run or a previous run cannot be read, or the results cannot be written.
    """
    thresholds = thresholds or Thresholds()
    previous = find_previous_run(run_url)
    if previous is None:
        report = empty_report(run_url, thresholds, n_resamples, confidence)
    else:
        report = compare_runs(previous, run_url, thresholds, n_resamples=n_resamples, confidence=confidence,
                              seed=seed)
    parent, rid = split_run_url(run_url)
    report.trend_runs = [*successful_runs(parent, before=rid, limit=max(0, trend_runs - 1)), rid]
    if plots and len(report.trend_runs) >= 2:
        try:
            report.plots = write_trend_plots(parent, report.trend_runs, run_url)
        except Exception as exc:  # noqa: BLE001 -- a missing browser must not lose the comparison itself
            report.plot_error = f"{exc.__class__.__name__}: {exc}"
            log.warning("regression: trend plots not written (%s)", report.plot_error)
    storage.write_text(storage.join(run_url, REGRESSION_JSON), report.model_dump_json(indent=2))
    storage.write_text(storage.join(run_url, REGRESSION_MD), render_markdown(report))
    log.info("regression: %s", report.summary())
    return report


def pending_trend_plots(run_url: str) -> tuple[RegressionReport, list[tuple[str, Any]]] | None:
    """The run's regression check, if it left its trend plots to be rendered, with their figures.

    Returns:
        None when the check has not run, has fewer than two runs to plot, or already has its plots
        (or their failure) recorded; else the report and (path inside the run directory, figure) pairs.
    """
    try:
        report = read_report(run_url)
    except Exception as exc:  # noqa: BLE001 -- e.g. a regression.json of another version: no plots, still a report
        log.warning("regression: %s/%s not read (%s)", run_url, REGRESSION_JSON, exc)
        return None
    if report is None or len(report.trend_runs) < 2 or report.plots or report.plot_error:
        return None
    parent, _ = split_run_url(run_url)
    try:
        return report, trend_figures(parent, report.trend_runs)
    except Exception as exc:  # noqa: BLE001 -- an unreadable earlier run costs the trend plots, not the report
        record_trend_plots(run_url, report, [], f"{exc.__class__.__name__}: {exc}")
        return None


def record_trend_plots(run_url: str, report: RegressionReport, plots: list[str], error: str | None) -> str:
    """Record the trend plots rendered for ``report`` (or why they are missing) in regression.json and
    regression.md; returns the new markdown."""
    report.plots, report.plot_error = plots, error
    if error:
        log.warning("regression: trend plots not written (%s)", error)
    markdown = render_markdown(report)
    storage.write_text(storage.join(run_url, REGRESSION_JSON), report.model_dump_json(indent=2))
    storage.write_text(storage.join(run_url, REGRESSION_MD), markdown)
    return markdown


def read_report(run_url: str) -> RegressionReport | None:
    """The run's regression.json, or None if the check has not run."""
    url = storage.join(run_url, REGRESSION_JSON)
    if not storage.exists(url):
        return None
    return RegressionReport.model_validate_json(storage.read_text(url))
