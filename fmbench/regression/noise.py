"""Run-to-run noise: seeded bootstrap intervals of a metric's change from per-request records."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import polars as pl

from fmbench import storage
from fmbench.records import final_attempts
from fmbench.regression.models import SHARD_KEYS, MetricRule, ShardKey, shard_key

if TYPE_CHECKING:  # numpy is imported where it is used: a report that checks no regression never needs it
    import numpy as np


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
    import numpy as np

    rng = np.random.default_rng(seed)
    diff = _resampled_stat(current, statistic, n_resamples, rng) - _resampled_stat(previous, statistic,
                                                                                  n_resamples, rng)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(diff, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_rate_ci(previous: np.ndarray, current: np.ndarray, value: float, n_resamples: int = 400,
                      confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the change of a closed-loop rate metric, from per-request records.

    ``previous`` and ``current`` hold one row per measured request: its time in flight (seconds) and
    whether it succeeded (1 or 0) (`rate_samples`). With a fixed number of requests in flight,
    successful requests per second are concurrency x (share that succeeded) / (mean time in flight)
    (Little's law), so the rate scales with that quotient from one run to the other; the interval of
    ``value * (the ratio - 1)`` is the change of the rate (``value`` is the previous run's) that
    run-to-run variation of the latencies and of the failures would explain. Requests are resampled
    whole (their time and outcome together).

    Returns:
        (low, high) of the change in the metric's units; NaNs when either sample is empty or a
        resample of the previous run's requests has no success (no rate to change from).
    """
    if previous.size == 0 or current.size == 0:
        return math.nan, math.nan
    import numpy as np

    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = _resampled_rate(current, n_resamples, rng) / _resampled_rate(previous, n_resamples, rng)
    if not np.isfinite(ratio).all():
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(value * (ratio - 1.0), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resampled_rate(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Per resample of the requests (rows of time in flight, success), successes per second of flight."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64).reshape(-1, 2)
    n = x.shape[0]
    chunk = max(1, min(n_resamples, 1_000_000 // max(1, n)))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        sample = x[rng.integers(0, n, size=(rows, n))]
        out[start:start + rows] = sample[..., 1].mean(axis=1) / sample[..., 0].mean(axis=1)
    return out


def rate_samples(part: pl.DataFrame | None) -> np.ndarray:
    """Rows of (time in flight in seconds, 1 if it succeeded else 0), one per measured request with
    both stamps: what a closed-loop rate of successful requests is made of (`bootstrap_rate_ci`). A
    successful request's time is its latency; a failed one's, from its send to its end."""
    import numpy as np

    if part is None or part.is_empty():
        return np.empty((0, 2))
    flight = pl.coalesce(pl.when(pl.col("ok").fill_null(False)).then(pl.col("latency_s")),
                         pl.col("t_end") - pl.col("t_start"))
    rows = (part.select(flight.alias("t"), pl.col("ok").fill_null(False).cast(pl.Float64).alias("ok"))
            .drop_nulls().filter(pl.col("t") > 0))
    return rows.to_numpy().astype(np.float64)


def _resampled_stat(x: np.ndarray, statistic: str, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    chunk = max(1, min(n_resamples, 2_000_000 // max(1, x.size)))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        sample = x[rng.integers(0, x.size, size=(rows, x.size))]
        out[start:start + rows] = (np.quantile(sample, 0.95, axis=1) if statistic == "p95"
                                   else sample.mean(axis=1))
    return out


def per_request(run_url: str) -> dict[ShardKey, pl.DataFrame]:
    """A run's measured (non-warmup) requests by shard, with a ``failed`` column; empty without records."""
    url = storage.join(run_url, "requests.parquet")
    if not storage.exists(url):
        return {}
    df = storage.read_parquet(url)
    if df.is_empty():
        return {}
    # a retried request is its final attempt, as in the metrics checked
    df = (final_attempts(df).filter(~pl.col("warmup").fill_null(False)).collect()
          .select(*SHARD_KEYS, "ok", "latency_s", "ttft_s", "t_start", "t_end")
          .with_columns((~pl.col("ok").fill_null(False)).cast(pl.Float64).alias("failed")))
    return {shard_key(dict(zip(SHARD_KEYS, k))): part for k, part in df.partition_by(SHARD_KEYS, as_dict=True).items()}


def samples(part: pl.DataFrame | None, rule: MetricRule) -> np.ndarray:
    """The per-request values whose noise a rule bootstraps (successful requests only, but for errors;
    for a rate, every request's time in flight and outcome: `rate_samples`)."""
    import numpy as np

    if part is None or rule.column is None:
        return np.empty(0)
    if rule.statistic == "rate":
        return rate_samples(part)
    if rule.column == "failed":
        return part["failed"].to_numpy()
    values = part.filter(pl.col("ok").fill_null(False))[rule.column].drop_nulls()
    return values.to_numpy().astype(np.float64)
