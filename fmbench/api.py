"""The public API for scripts and notebooks: `load_config`, `run_benchmark`, `report` and `compare`.

A run goes through the same sequence as the `fmbench` flow (`fmbench.sequence`), in this process
and without Prefect. Called where an event loop is already running (a Jupyter kernel), the run
goes to a worker thread with its own loops and the caller waits for it; an interrupt (the kernel's
stop button) reaches that thread, so the run deletes what it deployed before it stops.
"""

from __future__ import annotations

import asyncio
import ctypes
import html
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from fmbench import storage
from fmbench.config import BenchmarkConfig
from fmbench.regression import RegressionReport

T = TypeVar("T")

__all__ = ["BenchmarkResult", "ReportFiles", "compare", "load_config", "report", "run_benchmark"]


def load_config(source: str | Path | Mapping[str, Any] | BenchmarkConfig, *, overrides: Sequence[str] | None = None,
                experiments: Sequence[str] | None = None, concurrency_levels: Sequence[int] | None = None,
                requests_per_level: int | None = None, base_dir: str | Path | None = None) -> BenchmarkConfig:
    """A validated benchmark config, with every experiment's pricing resolved.

    Args:
        source: a YAML file path, an s3:// URL, YAML text, a mapping (as the YAML would load), or a
            `BenchmarkConfig` (re-validated with the changes below).
        overrides: ``key.path=value`` changes, as ``fmbench run --set``.
        experiments: keep only these experiments.
        concurrency_levels: replace every experiment's concurrency levels.
        requests_per_level: replace every experiment's measured requests per shard.
        base_dir: where relative dataset paths of a mapping resolve (default: the current directory).

    Raises:
        ConfigError: one line naming the source and the field.
    """
    from fmbench.pipeline import load_benchmark_config

    return load_benchmark_config(source, overrides=_list(overrides), experiments=_list(experiments),
                                 concurrency_levels=_list(concurrency_levels),
                                 requests_per_level=requests_per_level, base_dir=base_dir)


def _list(items: Sequence[Any] | None) -> list[Any] | None:
    return list(items) if items else None


@dataclass
class ReportFiles:
    """Where a report was written: report.md, report.html and the PNG plots."""

    markdown: str
    html: str
    plots: list[str] = field(default_factory=list)

    def _repr_html_(self) -> str:
        return (f"<p>Report: <a href=\"{html.escape(self.html)}\">{html.escape(self.html)}</a> "
                f"(<a href=\"{html.escape(self.markdown)}\">markdown</a>)</p>")


class BenchmarkResult:
    """A finished run: its directory, report, metrics (one row per shard) and regression check.

    In a notebook the object itself displays the summary table; `figures` gives the report's
    plotly figures, each of which displays inline.
    """

    def __init__(self, run_dir: str, report: str, regressions: RegressionReport | None = None) -> None:
        self.run_dir = run_dir
        self.report = report  # report.md
        self.regressions = regressions
        self._metrics: pl.DataFrame | None = None

    def __repr__(self) -> str:
        return f"BenchmarkResult(run_dir={self.run_dir!r}, report={self.report!r})"

    @property
    def run_id(self) -> str:
        """The run id (the run directory's name)."""
        return self.run_dir.rstrip("/").rsplit("/", 1)[-1]

    @property
    def report_html(self) -> str:
        """The self-contained HTML report beside report.md."""
        return storage.join(self.run_dir, "report.html")

    @property
    def metrics(self) -> pl.DataFrame:
        """One row per experiment × dataset × bucket × level (metrics.parquet)."""
        if self._metrics is None:
            self._metrics = storage.read_parquet(storage.join(self.run_dir, "metrics.parquet"))
        return self._metrics

    def requests(self) -> pl.DataFrame:
        """Every request sent (requests.parquet), warm-ups marked."""
        return storage.read_parquet(storage.join(self.run_dir, "requests.parquet"))

    def figures(self) -> dict[str, Any]:
        """The report's figures as plotly figures, by name (``latency_p95_vs_load``, ...)."""
        import plotly.graph_objects as go

        from fmbench.report import load_run
        from fmbench.report.figures import build_figures
        from fmbench.report.run import request_sample

        run = load_run(self.run_dir, write_metrics=False)
        figs, _ = build_figures(run.metrics, request_sample(run.requests), run.cfg.slo if run.cfg else None)
        return {f.stem: go.Figure(f.figure) for f in figs}

    def _repr_html_(self) -> str:
        from fmbench.report import metrics_table_rows

        rows = metrics_table_rows(self.metrics)
        head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {}))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
                       for r in rows)
        changes = ""
        if self.regressions is not None:
            changes = f"<p>{html.escape(self.regressions.summary())}</p>"
        return (f"<p><b>fmbench run {html.escape(self.run_id)}</b> — report: "
                f"<a href=\"{html.escape(self.report_html)}\">{html.escape(self.report_html)}</a></p>{changes}"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def run_benchmark(config: str | Path | Mapping[str, Any] | BenchmarkConfig, *, output: str | None = None,
                  run_id: str | None = None, overrides: Sequence[str] | None = None,
                  experiments: Sequence[str] | None = None, concurrency_levels: Sequence[int] | None = None,
                  requests_per_level: int | None = None, regression_threshold: float = 0.10,
                  progress: bool = True, png: bool = True) -> BenchmarkResult:
    """Run a benchmark in this process (no Prefect server needed) and return its result.

    Works in a plain script and inside a running event loop (a notebook). Bad input fails before
    anything is measured.

    Args:
        config: see `load_config`; the other config arguments change it the same way.
        output: results location (default: the config's); the run goes to OUTPUT/NAME/RUN_ID.
        run_id: an existing run id resumes that run (measured shards are not sent again).
        regression_threshold: relative change versus the previous run that is flagged.
        progress: show progress (a live table on a terminal, periodic lines elsewhere).
        png: also write the static PNG plots (needs Chromium); report.html has the figures either way.

    Raises:
        FMBenchError: bad input (config, dataset, credentials, endpoint), one line naming it.
    """
    cfg = load_config(config, overrides=overrides, experiments=experiments, concurrency_levels=concurrency_levels,
                      requests_per_level=requests_per_level)

    def run() -> BenchmarkResult:
        from fmbench.inline import InlineSteps
        from fmbench.sequence import run_sequence

        with InlineSteps() as steps:
            result = run_sequence(steps, cfg, output=output, run_id=run_id,
                                  command="fmbench.run_benchmark(...)", regression_threshold=regression_threshold,
                                  png=png)
        return BenchmarkResult(result.run.url, result.report, result.regressions)

    if not progress:
        return _outside_event_loop(run)
    from fmbench.live import show_progress

    with show_progress(sys.stderr):
        return _outside_event_loop(run)


def report(run_dir: str | BenchmarkResult) -> BenchmarkResult:
    """Render a run's report again from its stored records (local directory or s3:// URL)."""
    from fmbench.report import render_report

    url = run_dir.run_dir if isinstance(run_dir, BenchmarkResult) else str(run_dir)
    paths = _outside_event_loop(lambda: render_report(url))
    return BenchmarkResult(url, str(paths.markdown))


def compare(runs: Sequence[str | BenchmarkResult], output: str | Path) -> ReportFiles:
    """One report comparing several runs side by side, written to ``output``."""
    from fmbench.report import compare_runs

    urls = [r.run_dir if isinstance(r, BenchmarkResult) else str(r) for r in runs]
    paths = _outside_event_loop(lambda: compare_runs(urls, str(output)))
    return ReportFiles(str(paths.markdown), str(paths.html), list(paths.plots))


def _outside_event_loop(fn: Callable[[], T]) -> T:
    """Call ``fn`` here, or, when this thread runs an event loop (a Jupyter kernel), in a worker
    thread, since the library starts event loops of its own (`asyncio.run` refuses to nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="fmbench-run", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        # The run's own clean-up (teardown of what it deployed) runs on an interrupt in its thread.
        if worker.ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(KeyboardInterrupt))
        worker.join()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
