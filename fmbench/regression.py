"""Regression alerts: compare a run with the previous successful run of the same benchmark.

Runs live at ``<output>/<name>/<run_id>/`` and run ids sort by time, so the previous run is the
latest earlier run id whose manifest has ``ended_at`` and which has ``metrics.parquet``. Each shard
(experiment × dataset × bucket × level) is compared metric by metric against a relative threshold;
for p95 latency, p95 TTFT and the error rate a seeded bootstrap of the per-request records gives a
confidence interval of the difference, saying whether the change is larger than run-to-run noise.

Writes into the run directory (local or ``s3://``): ``regression.json`` (`RegressionReport`),
``regression.md`` (a "Changes since <run>" section for report.md) and ``plots/trend_*.png``.
"""

from __future__ import annotations

import logging
import math
import posixpath
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from fmbench import storage
from fmbench.errors import FMBenchError, StorageError
from fmbench.rundir import MANIFEST, load_manifest

log = logging.getLogger("fmbench")

#: Files this module writes into a run directory.
REGRESSION_JSON = "regression.json"
REGRESSION_MD = "regression.md"
TREND_PLOTS: dict[str, str] = {
    "latency_p95_s": "plots/trend_latency_p95.png",
    "ttft_p95_s": "plots/trend_ttft_p95.png",
    "transactions_per_min": "plots/trend_throughput.png",
    "cost_per_10k_txn": "plots/trend_cost.png",
}

_KEYS = ["experiment", "dataset", "bucket", "concurrency", "request_rate"]
ShardKey = tuple[str, str, str, int, float | None]


class MetricRule(BaseModel):
    """How one metric is compared: which way is worse and what per-request data measures its noise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="Column of metrics.parquet.")
    label: str = Field(description="Name shown in the report.")
    worse: Literal["up", "down"] = Field(description="The direction that is a regression.")
    column: str | None = Field(default=None, description="requests.parquet column bootstrapped for noise.")
    statistic: Literal["p95", "mean", "rate"] | None = Field(
        default=None, description="Statistic of `column`; rate: a closed-loop rate, ~ 1 / mean latency.")


#: The metrics compared, in report order.
RULES: tuple[MetricRule, ...] = (
    MetricRule(metric="latency_p95_s", label="p95 latency", worse="up", column="latency_s", statistic="p95"),
    MetricRule(metric="ttft_p95_s", label="p95 TTFT", worse="up", column="ttft_s", statistic="p95"),
    MetricRule(metric="transactions_per_min", label="throughput (txn/min)", worse="down", column="latency_s",
               statistic="rate"),
    MetricRule(metric="output_tokens_per_s", label="output tokens/s", worse="down", column="latency_s",
               statistic="rate"),
    MetricRule(metric="error_rate", label="error rate", worse="up", column="failed", statistic="mean"),
    MetricRule(metric="cost_per_10k_txn", label="cost per 10k txn", worse="up"),
)


class Thresholds(BaseModel):
    """Relative change (0.10 = 10%) beyond which a metric moving the wrong way is flagged."""

    model_config = ConfigDict(extra="forbid")

    latency_p95_s: float = Field(default=0.10, ge=0, description="p95 latency increase.")
    ttft_p95_s: float = Field(default=0.10, ge=0, description="p95 time-to-first-token increase.")
    transactions_per_min: float = Field(default=0.10, ge=0, description="Throughput decrease.")
    output_tokens_per_s: float = Field(default=0.10, ge=0, description="Output token rate decrease.")
    error_rate: float = Field(default=0.10, ge=0, description="Error rate increase (relative).")
    cost_per_10k_txn: float = Field(default=0.10, ge=0, description="Cost per 10k transactions increase.")
    error_rate_min_abs: float = Field(
        default=0.01, ge=0,
        description="The error rate must also rise by at least this much in absolute terms (0.01 = one "
        "point): from 0 any error is an infinite relative rise.",
    )

    @classmethod
    def uniform(cls, threshold: float) -> Thresholds:
        """The same relative threshold for every metric."""
        return cls(**{r.metric: threshold for r in RULES})


class MetricChange(BaseModel):
    """One metric of one shard, previous run vs this run."""

    model_config = ConfigDict(extra="forbid")

    experiment: str
    dataset: str
    bucket: str
    concurrency: int
    request_rate: float | None = None
    metric: str
    label: str
    previous: float | None
    current: float | None
    change: float | None = Field(description="Relative change (current/previous - 1); None when undefined.")
    threshold: float
    worse: Literal["up", "down"]
    beyond_threshold: bool = Field(description="Moved the wrong way by more than the threshold.")
    ci_low: float | None = Field(default=None, description="Bootstrap CI of current - previous, low end.")
    ci_high: float | None = Field(default=None, description="Bootstrap CI of current - previous, high end.")
    significant: bool | None = Field(
        default=None, description="The CI excludes zero on the worse side; None without per-request data.")
    regression: bool = Field(description="Beyond the threshold and not within run-to-run noise.")
    improvement: bool = Field(description="Moved the good way by more than the threshold, beyond noise.")

    @property
    def shard(self) -> str:
        """A short shard label, e.g. ``sim / synthetic / 1-300 / c4``."""
        level = f"r{self.request_rate:g}" if self.request_rate is not None else f"c{self.concurrency}"
        return f"{self.experiment} / {self.dataset} / {self.bucket} / {level}"


class RegressionReport(BaseModel):
    """Everything `check_regressions` found; written as regression.json."""

    model_config = ConfigDict(extra="forbid")

    name: str
    run_id: str
    run_url: str
    previous_run_id: str | None = None
    previous_run_url: str | None = None
    status: Literal["no-previous", "ok", "regressed"]
    config_changed: bool = Field(default=False, description="The config hash differs from the previous run's.")
    thresholds: Thresholds
    confidence: float
    n_resamples: int
    compared_shards: int = 0
    changes: list[MetricChange] = Field(default_factory=list)
    newly_failed: list[str] = Field(default_factory=list, description="Shards ok before, failed now.")
    new_shards: list[str] = Field(default_factory=list)
    missing_shards: list[str] = Field(default_factory=list)
    trend_runs: list[str] = Field(default_factory=list, description="Run ids plotted in the trend plots.")
    plots: list[str] = Field(default_factory=list, description="Trend plot URLs.")
    plot_error: str | None = None

    @property
    def regressions(self) -> list[MetricChange]:
        """Changes flagged as regressions."""
        return [c for c in self.changes if c.regression]

    @property
    def within_noise(self) -> list[MetricChange]:
        """Changes beyond the threshold that the bootstrap cannot tell from noise."""
        return [c for c in self.changes if c.beyond_threshold and c.significant is False]

    @property
    def improvements(self) -> list[MetricChange]:
        """Changes the good way beyond the threshold and beyond noise."""
        return [c for c in self.changes if c.improvement]

    def summary(self) -> str:
        """One line for logs and flow run messages."""
        if self.status == "no-previous":
            return f"{self.name}: no previous successful run to compare with"
        n = len(self.regressions) + len(self.newly_failed)
        if not n:
            return f"{self.name}: no regression since {self.previous_run_id}"
        first = self.regressions[0] if self.regressions else None
        what = (f"{first.label} {_fmt_change(first)} on {first.shard}" if first
                else f"shard {self.newly_failed[0]} failed")
        return f"{self.name}: {n} regression(s) since {self.previous_run_id}, e.g. {what}"


# ---------------------------------------------------------------- finding runs


def list_run_ids(benchmark_url: str) -> list[str]:
    """Run ids (subdirectories) under ``<output>/<name>``, sorted (oldest first).

    Raises:
        StorageError: the location cannot be listed.
    """
    if not storage.is_remote(benchmark_url):
        p = Path(benchmark_url)
        return sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")) if p.is_dir() else []
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(benchmark_url)
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True) if fs.exists(path) else []
    except Exception as exc:  # s3fs/botocore raise many types; translated here, once
        raise StorageError(f"{benchmark_url}: cannot list runs: {exc.__class__.__name__}: {exc}") from exc
    names = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory"]
    return sorted(n for n in names if n and not n.startswith("."))


def is_successful_run(run_url: str) -> bool:
    """True when the run finished (manifest ``ended_at`` set) and has metrics.parquet."""
    if not storage.exists(storage.join(run_url, MANIFEST)) or not storage.exists(storage.join(run_url, "metrics.parquet")):
        return False
    try:
        return bool(load_manifest(run_url).ended_at)
    except StorageError:
        return False


def successful_runs(benchmark_url: str, before: str | None = None, limit: int | None = None) -> list[str]:
    """Successful run ids under ``<output>/<name>``, oldest first by their manifests' start time
    (custom run ids such as ``baseline`` sort by time, not name); only runs started before run
    ``before`` if given, and only the last ``limit`` of them."""
    cutoff = (_started_at(storage.join(benchmark_url, before)), before) if before is not None else None
    found: list[tuple[tuple[str, str], str]] = []
    for rid in list_run_ids(benchmark_url):
        url = storage.join(benchmark_url, rid)
        if rid == before or not is_successful_run(url):
            continue
        key = (_started_at(url), rid)
        if cutoff is not None and key >= cutoff:
            continue
        found.append((key, rid))
    ids = [rid for _, rid in sorted(found)]
    return ids[-limit:] if limit else ids


def _started_at(run_url: str) -> str:
    try:
        return str(load_manifest(run_url).started_at or "")
    except FMBenchError:
        return ""


def find_previous_run(run_url: str) -> str | None:
    """The URL of the previous successful run of the same benchmark under the same output, or None."""
    parent, rid = _split_run_url(run_url)
    previous = successful_runs(parent, before=rid, limit=1)
    return storage.join(parent, previous[0]) if previous else None


def _split_run_url(run_url: str) -> tuple[str, str]:
    if storage.is_remote(run_url):
        trimmed = run_url.rstrip("/")
        return posixpath.dirname(trimmed), posixpath.basename(trimmed)
    p = Path(run_url)
    return str(p.parent), p.name


# ---------------------------------------------------------------- noise


def bootstrap_diff_ci(previous: np.ndarray, current: np.ndarray, statistic: Literal["p95", "mean"],
                      n_resamples: int = 400, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``stat(current) - stat(previous)``.

    Both samples are resampled with replacement ``n_resamples`` times (vectorised, in chunks that
    keep memory bounded); the same seed gives the same interval.

    Returns:
        (low, high) of the difference; NaNs when either sample is empty.
    """
    if previous.size == 0 or current.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    diff = _resampled_stat(current, statistic, n_resamples, rng) - _resampled_stat(previous, statistic,
                                                                                  n_resamples, rng)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diff, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_rate_ci(previous: np.ndarray, current: np.ndarray, value: float, n_resamples: int = 400,
                      confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the change of a closed-loop rate metric, from per-request latencies.

    With a fixed number of requests in flight, throughput is concurrency / mean latency (Little's
    law), so the rate scales with ``mean(previous) / mean(current)``; the interval of
    ``value * (that ratio - 1)`` is the change of the rate (``value`` is the previous run's) that
    run-to-run variation of the latencies alone would explain.

    Returns:
        (low, high) of the change in the metric's units; NaNs when either sample is empty.
    """
    if previous.size == 0 or current.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    ratio = _resampled_stat(previous, "mean", n_resamples, rng) / _resampled_stat(current, "mean", n_resamples, rng)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(value * (ratio - 1.0), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resampled_stat(x: np.ndarray, statistic: str, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    chunk = max(1, min(n_resamples, 2_000_000 // max(1, x.size)))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        sample = x[rng.integers(0, x.size, size=(rows, x.size))]
        out[start:start + rows] = (np.quantile(sample, 0.95, axis=1) if statistic == "p95"
                                   else sample.mean(axis=1))
    return out


def _per_request(run_url: str) -> dict[ShardKey, pl.DataFrame]:
    url = storage.join(run_url, "requests.parquet")
    if not storage.exists(url):
        return {}
    df = storage.read_parquet(url)
    if df.is_empty():
        return {}
    df = (df.filter(~pl.col("warmup").fill_null(False))
          .select(*_KEYS, "ok", "latency_s", "ttft_s")
          .with_columns((~pl.col("ok").fill_null(False)).cast(pl.Float64).alias("failed")))
    return {_key(dict(zip(_KEYS, k))): part for k, part in df.partition_by(_KEYS, as_dict=True).items()}


def _samples(part: pl.DataFrame | None, rule: MetricRule) -> np.ndarray:
    if part is None or rule.column is None:
        return np.empty(0)
    if rule.column == "failed":
        return part["failed"].to_numpy()
    values = part.filter(pl.col("ok").fill_null(False))[rule.column].drop_nulls()
    return values.to_numpy().astype(np.float64)


# ---------------------------------------------------------------- comparing


def _key(row: dict[str, Any]) -> ShardKey:
    rate = row.get("request_rate")
    return (str(row["experiment"]), str(row["dataset"]), str(row["bucket"]), int(row["concurrency"] or 0),
            None if rate is None else float(rate))


def _label(key: ShardKey) -> str:
    level = f"r{key[4]:g}" if key[4] is not None else f"c{key[3]}"
    return f"{key[0]} / {key[1]} / {key[2]} / {level}"


def _metrics_by_shard(run_url: str) -> dict[ShardKey, dict[str, Any]]:
    df = storage.read_parquet(storage.join(run_url, "metrics.parquet"))
    return {_key(row): row for row in df.to_dicts()}


def _relative(previous: float | None, current: float | None) -> float | None:
    if previous is None or current is None or not math.isfinite(previous) or not math.isfinite(current):
        return None
    if previous == 0:
        return 0.0 if current == 0 else None
    return current / previous - 1.0


def compare_metric(key: ShardKey, rule: MetricRule, previous: float | None, current: float | None,
                   thresholds: Thresholds, ci: tuple[float, float] | None = None) -> MetricChange | None:
    """Compare one metric of one shard; None when either value is missing.

    Args:
        ci: bootstrap interval of ``current - previous`` (see `bootstrap_diff_ci`), if per-request
            data was available.
    """
    if previous is None or current is None or (isinstance(previous, float) and math.isnan(previous)) \
            or (isinstance(current, float) and math.isnan(current)):
        return None
    threshold = float(getattr(thresholds, rule.metric))
    change = _relative(previous, current)
    sign = 1.0 if rule.worse == "up" else -1.0
    delta = (current - previous) * sign  # > 0: worse
    if rule.metric == "error_rate":
        worse = delta >= thresholds.error_rate_min_abs and (change is None or change > threshold)
        better = -delta >= thresholds.error_rate_min_abs and (change is None or -change > threshold)
    else:
        worse = delta > 0 and (change is None or change * sign > threshold)
        better = delta < 0 and change is not None and -change * sign > threshold
    low = high = None
    significant: bool | None = None
    improved_beyond_noise: bool | None = None
    if ci is not None and math.isfinite(ci[0]) and math.isfinite(ci[1]):
        low, high = ci
        significant = (low > 0) if rule.worse == "up" else (high < 0)
        improved_beyond_noise = (high < 0) if rule.worse == "up" else (low > 0)
    return MetricChange(
        experiment=key[0], dataset=key[1], bucket=key[2], concurrency=key[3], request_rate=key[4],
        metric=rule.metric, label=rule.label, previous=float(previous), current=float(current), change=change,
        threshold=threshold, worse=rule.worse, beyond_threshold=worse, ci_low=low, ci_high=high,
        significant=significant, regression=worse and significant is not False,
        improvement=better and improved_beyond_noise is not False,
    )


def compare_runs(previous_url: str, current_url: str, thresholds: Thresholds | None = None, *,
                 n_resamples: int = 400, confidence: float = 0.95, seed: int = 0) -> RegressionReport:
    """Compare two successful runs shard by shard (nothing is written).

    Raises:
        StorageError: a run's metrics cannot be read.
    """
    thresholds = thresholds or Thresholds()
    prev_m, cur_m = _metrics_by_shard(previous_url), _metrics_by_shard(current_url)
    prev_r, cur_r = _per_request(previous_url), _per_request(current_url)
    report = _empty_report(current_url, thresholds, n_resamples, confidence)
    report.previous_run_url = previous_url
    report.previous_run_id = _split_run_url(previous_url)[1]
    report.config_changed = _config_hash(previous_url) != _config_hash(current_url)
    report.new_shards = [_label(k) for k in cur_m if k not in prev_m]
    report.missing_shards = [_label(k) for k in prev_m if k not in cur_m]
    for i, key in enumerate(k for k in cur_m if k in prev_m):
        prev_row, cur_row = prev_m[key], cur_m[key]
        prev_ok, cur_ok = prev_row.get("status", "ok") == "ok", cur_row.get("status", "ok") == "ok"
        if prev_ok and not cur_ok:
            report.newly_failed.append(_label(key))
        if not (prev_ok and cur_ok):
            continue
        report.compared_shards += 1
        for j, rule in enumerate(RULES):
            ci = None
            a, b = _samples(prev_r.get(key), rule), _samples(cur_r.get(key), rule)
            prev_value = prev_row.get(rule.metric)
            if a.size and b.size and rule.statistic in ("p95", "mean"):
                ci = bootstrap_diff_ci(a, b, rule.statistic, n_resamples, confidence, seed + 7919 * i + j)
            elif a.size and b.size and rule.statistic == "rate" and key[4] is None and prev_value:
                # Little's law holds for closed-loop shards only; open-loop rates follow the schedule
                ci = bootstrap_rate_ci(a, b, float(prev_value), n_resamples, confidence, seed + 7919 * i + j)
            change = compare_metric(key, rule, prev_value, cur_row.get(rule.metric), thresholds, ci)
            if change is not None:
                report.changes.append(change)
    report.status = "regressed" if report.regressions or report.newly_failed else "ok"
    return report


def _empty_report(run_url: str, thresholds: Thresholds, n_resamples: int, confidence: float) -> RegressionReport:
    parent, rid = _split_run_url(run_url)
    name = load_manifest(run_url).name if storage.exists(storage.join(run_url, MANIFEST)) else None
    return RegressionReport(name=name or _split_run_url(parent)[1], run_id=rid, run_url=run_url,
                            status="no-previous", thresholds=thresholds, confidence=confidence,
                            n_resamples=n_resamples)


def _config_hash(run_url: str) -> str | None:
    try:
        return load_manifest(run_url).config_hash
    except StorageError:
        return None


# ---------------------------------------------------------------- the entry point


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
        plots: render the trend plots (needs kaleido and Chromium, BROWSER_PATH).

    Returns:
        The `RegressionReport`; ``status`` is "regressed" when anything regressed.

    Raises:
        StorageError: the run or a previous run cannot be read, or the results cannot be written.
    """
    thresholds = thresholds or Thresholds()
    previous = find_previous_run(run_url)
    if previous is None:
        report = _empty_report(run_url, thresholds, n_resamples, confidence)
    else:
        report = compare_runs(previous, run_url, thresholds, n_resamples=n_resamples, confidence=confidence,
                              seed=seed)
    parent, rid = _split_run_url(run_url)
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


def read_report(run_url: str) -> RegressionReport | None:
    """The run's regression.json, or None if the check has not run."""
    url = storage.join(run_url, REGRESSION_JSON)
    if not storage.exists(url):
        return None
    return RegressionReport.model_validate_json(storage.read_text(url))


# ---------------------------------------------------------------- markdown


_SECONDS = {"latency_p95_s", "ttft_p95_s"}


def _fmt_value(metric: str, v: float | None) -> str:
    if v is None:
        return "–"
    if metric in _SECONDS:
        return f"{v * 1000:.0f} ms" if abs(v) < 10 else f"{v:.1f} s"
    if metric == "error_rate":
        return f"{v * 100:.1f}%"
    if metric.startswith("cost"):
        return f"${v:,.4g}"
    return f"{v:,.1f}"


def _fmt_change(c: MetricChange) -> str:
    if c.change is None:
        return "from 0" if c.previous == 0 else "n/a"
    return f"{c.change * 100:+.1f}%"


def _fmt_ci(c: MetricChange) -> str:
    if c.ci_low is None or c.ci_high is None:
        return "–"
    return f"{_fmt_delta(c.metric, c.ci_low)} … {_fmt_delta(c.metric, c.ci_high)}"


def _fmt_delta(metric: str, v: float) -> str:
    if metric in _SECONDS:
        return f"{v * 1000:+.0f} ms"
    if metric == "error_rate":
        return f"{v * 100:+.1f} pt"
    return f"{v:+.3g}"


def _table(changes: list[MetricChange], confidence: float) -> list[str]:
    lines = [f"| shard | metric | previous | current | change | {confidence:.0%} CI of difference |",
             "|---|---|---:|---:|---:|---|"]
    for c in changes:
        lines.append(f"| {c.shard} | {c.label} | {_fmt_value(c.metric, c.previous)} | "
                     f"{_fmt_value(c.metric, c.current)} | {_fmt_change(c)} | {_fmt_ci(c)} |")
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
            "closed-loop shards take their interval from the mean latency (Little's law); cost and open-loop "
            "rates have no noise estimate (–)."), ""]
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
        frames.append(df.select(*_KEYS, *[pl.col(c).cast(pl.Float64) for c in present])
                      .with_columns(pl.lit(rid).alias("run_id")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def write_trend_plots(benchmark_url: str, run_ids: list[str], run_url: str) -> list[str]:
    """Render one PNG per trend metric (a line per shard, runs on the x axis) into the run's plots/.

    Returns:
        The URLs written.
    """
    import plotly.graph_objects as go
    import plotly.io as pio

    df = trend_frame(benchmark_url, run_ids)
    figs, names = [], []
    for metric, rel in TREND_PLOTS.items():
        if metric not in df.columns or df[metric].is_null().all():
            continue
        label = next(r.label for r in RULES if r.metric == metric)
        fig = go.Figure(layout={"template": pio.templates["plotly_white"]})  # see fmbench.report.figures.new_figure
        for key, part in sorted(df.partition_by(_KEYS, as_dict=True).items(), key=lambda kv: str(kv[0])):
            part = part.sort("run_id")
            fig.add_trace(go.Scatter(x=part["run_id"].to_list(), y=part[metric].to_list(), mode="lines+markers",
                                     name=_label(_key(dict(zip(_KEYS, key))))))
        unit = " (s)" if metric in _SECONDS else " (USD)" if metric.startswith("cost") else ""
        fig.update_layout(title=f"{label}: last {len(run_ids)} runs", xaxis_title="run", yaxis_title=label + unit,
                          xaxis={"type": "category", "categoryorder": "array", "categoryarray": run_ids},
                          width=900, height=450, legend={"font": {"size": 9}})
        figs.append(fig)
        names.append(rel)
    if not figs:
        return []
    with tempfile.TemporaryDirectory(prefix="fmbench-trend-") as tmp:
        local = [str(Path(tmp, Path(n).name)) for n in names]
        pio.write_images(figs, local)
        urls = []
        for name, path in zip(names, local):
            url = storage.join(run_url, *name.split("/"))
            storage.write_bytes(url, Path(path).read_bytes())
            urls.append(url)
    return urls
