"""Rendering a regression report: the markdown section of report.md and the trend plots."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from fmbench import storage
from fmbench.regression.models import (
    LATENCY_METRICS,
    RULES,
    SHARD_KEYS,
    TREND_PLOTS,
    MetricChange,
    RegressionReport,
    format_change,
    shard_key,
    shard_label,
)

#: Width and height of a trend plot (pixels).
TREND_SIZE = (900, 450)


def _fmt_value(metric: str, v: float | None) -> str:
    if v is None:
        return "–"
    if metric in LATENCY_METRICS:
        return f"{v * 1000:.0f} ms" if abs(v) < 10 else f"{v:.1f} s"
    if metric == "error_rate":
        return f"{v * 100:.1f}%"
    if metric.startswith("cost"):
        return f"${v:,.4g}"
    return f"{v:,.1f}"


def _fmt_ci(c: MetricChange) -> str:
    if c.ci_low is None or c.ci_high is None:
        return "–"
    return f"{_fmt_delta(c.metric, c.ci_low)} … {_fmt_delta(c.metric, c.ci_high)}"


def _fmt_delta(metric: str, v: float) -> str:
    if metric in LATENCY_METRICS:
        return f"{v * 1000:+.0f} ms"
    if metric == "error_rate":
        return f"{v * 100:+.1f} pt"
    return f"{v:+.3g}"


def _table(changes: list[MetricChange], confidence: float) -> list[str]:
    lines = [f"| shard | metric | previous | current | change | {confidence:.0%} CI of difference |",
             "|---|---|---:|---:|---:|---|"]
    for c in changes:
        lines.append(f"| {c.shard} | {c.label} | {_fmt_value(c.metric, c.previous)} | "
                     f"{_fmt_value(c.metric, c.current)} | {format_change(c)} | {_fmt_ci(c)} |")
    return lines


def render_markdown(report: RegressionReport, images: bool = True) -> str:
    """The "Changes since <previous run>" section (markdown) of a regression report.

    Args:
        images: link the trend plots (relative to the run directory, for report.md); off where
            relative links do not resolve (the Prefect UI's artifacts).
    """
    if report.status == "no-previous":
        return (f"## Changes since the previous run\n\nNo previous successful run of `{report.name}` under this "
                "output to compare with; the next run will be compared with this one.\n")
    t = report.thresholds
    out = [f"## Changes since {report.previous_run_id}", "",
           (f"Run `{report.run_id}` compared with `{report.previous_run_id}` on {report.compared_shards} shard(s). "
           f"Flagged: p95 latency/TTFT, error rate or cost up, throughput down by more than the threshold "
           f"(latency {t.latency_p95_s:.0%}, TTFT {t.ttft_p95_s:.0%}, throughput {t.transactions_per_min:.0%}, "
           f"error rate {t.error_rate:.0%} and at least {t.error_rate_min_abs * 100:g} pt, cost "
           f"{t.cost_per_10k_txn:.0%}). Noise: a {report.confidence:.0%} bootstrap interval "
           f"({report.n_resamples} resamples of each run's requests) of the difference; a change whose "
           "interval includes zero is within run-to-run variation and not flagged. Throughput and token rate of "
            "closed-loop shards take their interval from every request's time in flight and outcome (Little's "
            "law, failures included); cost and open-loop rates have no noise estimate (–)."), ""]
    if report.config_changed:
        out += [("> The config changed since the previous run (different config hash): differences may "
                 "come from the change, not from the endpoint."), ""]
    regressions = report.regressions
    if regressions or report.newly_failed:
        out += [f"**{len(regressions) + len(report.newly_failed)} regression(s).**", ""]
        if regressions:
            out += [*_table(regressions, report.confidence), ""]
        for label in report.newly_failed:
            out.append(f"- shard {label}: succeeded in {report.previous_run_id}, failed now")
        if report.newly_failed:
            out.append("")
    else:
        out += ["**No regression.**", ""]
    untrusted = report.untrusted
    if untrusted:
        out += [(f"Not counted ({len(untrusted)}): beyond the threshold, but no larger than what the measurement "
                 "itself was off by in either run (an invalid shard, or a simulated endpoint whose chunks went out "
                 "late on a busy machine). Run again on a quieter machine to compare these."), "",
                *_table(untrusted, report.confidence), "",
                *sorted({f"- {c.shard}: {c.caveat}" for c in untrusted}), ""]
    noise = report.within_noise
    if noise:
        out += [f"Beyond the threshold but within run-to-run noise ({len(noise)}):", "",
                *_table(noise, report.confidence), ""]
    if report.improvements:
        out += [f"Improvements ({len(report.improvements)}):", "", *_table(report.improvements, report.confidence),
                ""]
    if report.new_shards:
        out += ["New shards (not in the previous run): " + ", ".join(report.new_shards), ""]
    if report.missing_shards:
        out += ["Shards of the previous run not measured now: " + ", ".join(report.missing_shards), ""]
    if report.plots and images:
        out += [f"Trend over the last {len(report.trend_runs)} runs:", ""]
        for metric, rel in TREND_PLOTS.items():
            if any(p.endswith(rel.split("/")[-1]) for p in report.plots):
                label = next(r.label for r in RULES if r.metric == metric)
                out.append(f"![{label} trend]({rel})")
        out.append("")
    elif report.plot_error:
        out += [f"Trend plots not rendered: {report.plot_error}", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- trend plots


def trend_frame(benchmark_url: str, run_ids: list[str]) -> pl.DataFrame:
    """The compared metrics of several runs stacked, with a ``run_id`` column (for plots)."""
    frames = []
    cols = [r.metric for r in RULES]
    for rid in run_ids:
        df = storage.read_parquet(storage.join(benchmark_url, rid, "metrics.parquet"))
        present = [c for c in cols if c in df.columns]
        frames.append(df.select(*SHARD_KEYS, *[pl.col(c).cast(pl.Float64) for c in present])
                      .with_columns(pl.lit(rid).alias("run_id")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def trend_figures(benchmark_url: str, run_ids: list[str]) -> list[tuple[str, Any]]:
    """One plotly figure per trend metric (a line per shard, runs on the x axis).

    Returns:
        (path inside the run directory, e.g. ``plots/trend_ttft_p95.png``, figure) per metric with data.
    """
    import plotly.graph_objects as go
    import plotly.io as pio

    df = trend_frame(benchmark_url, run_ids)
    out = []
    for metric, rel in TREND_PLOTS.items():
        if metric not in df.columns or df[metric].is_null().all():
            continue
        label = next(r.label for r in RULES if r.metric == metric)
        fig = go.Figure(layout={"template": pio.templates["plotly_white"]})  # see fmbench.report.figures.new_figure
        for key, part in sorted(df.partition_by(SHARD_KEYS, as_dict=True).items(), key=lambda kv: str(kv[0])):
            part = part.sort("run_id")
            fig.add_trace(go.Scatter(x=part["run_id"].to_list(), y=part[metric].to_list(), mode="lines+markers",
                                     name=shard_label(shard_key(dict(zip(SHARD_KEYS, key))))))
        unit = " (s)" if metric in LATENCY_METRICS else " (USD)" if metric.startswith("cost") else ""
        fig.update_layout(title=f"{label}: last {len(run_ids)} runs", xaxis_title="run", yaxis_title=label + unit,
                          xaxis={"type": "category", "categoryorder": "array", "categoryarray": run_ids},
                          width=TREND_SIZE[0], height=TREND_SIZE[1], legend={"font": {"size": 9}})
        out.append((rel, fig))
    return out


def store_trend_pngs(run_url: str, rendered: list[tuple[str, Path]]) -> list[str]:
    """Copy rendered trend PNGs (path inside the run directory, local file) into the run; returns their URLs."""
    urls = []
    for rel, path in rendered:
        url = storage.join(run_url, *rel.split("/"))
        storage.write_bytes(url, path.read_bytes())
        urls.append(url)
    return urls


def write_trend_plots(benchmark_url: str, run_ids: list[str], run_url: str,
                      timeout_s: float | None = None) -> list[str]:
    """Render the trend plots (`trend_figures`) into the run's plots/ with a browser of their own.

    Args:
        timeout_s: the export's deadline (default `fmbench.png.export_timeout_s`); a stalled
            browser is killed when it passes.

    Returns:
        The URLs written.

    Raises:
        TimeoutError, RuntimeError: the export did not finish in time, or failed (no browser).
    """
    from fmbench.png import export_pngs

    figs = trend_figures(benchmark_url, run_ids)
    if not figs:
        return []
    with tempfile.TemporaryDirectory(prefix="fmbench-trend-") as tmp:
        local = [Path(tmp, Path(rel).name) for rel, _ in figs]
        export_pngs([f for _, f in figs], local, [TREND_SIZE] * len(figs), timeout_s)
        return store_trend_pngs(run_url, [(rel, path) for (rel, _), path in zip(figs, local, strict=True)])
