"""Comparing two runs shard by shard, metric by metric, against thresholds and noise.

Each shard (experiment × dataset × bucket × level) is compared metric by metric against a relative
threshold; for p95 latency, p95 TTFT, the error rate and closed-loop rates a seeded bootstrap of
the per-request records (`noise`) says whether the change is larger than run-to-run variation.
"""

from __future__ import annotations

import math
from typing import Any

from fmbench import storage
from fmbench.errors import StorageError
from fmbench.regression.history import split_run_url
from fmbench.regression.models import (
    RULES,
    MetricChange,
    MetricRule,
    RegressionReport,
    ShardKey,
    Thresholds,
    shard_key,
    shard_label,
)
from fmbench.regression.noise import bootstrap_diff_ci, bootstrap_rate_ci, per_request, samples
from fmbench.rundir import has_manifest, load_manifest


def _metrics_by_shard(run_url: str) -> dict[ShardKey, dict[str, Any]]:
    df = storage.read_parquet(storage.join(run_url, "metrics.parquet"))
    return {shard_key(row): row for row in df.to_dicts()}


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
    prev_r, cur_r = per_request(previous_url), per_request(current_url)
    report = empty_report(current_url, thresholds, n_resamples, confidence)
    report.previous_run_url = previous_url
    report.previous_run_id = split_run_url(previous_url)[1]
    report.config_changed = _config_hash(previous_url) != _config_hash(current_url)
    report.new_shards = [shard_label(k) for k in cur_m if k not in prev_m]
    report.missing_shards = [shard_label(k) for k in prev_m if k not in cur_m]
    for i, key in enumerate(k for k in cur_m if k in prev_m):
        prev_row, cur_row = prev_m[key], cur_m[key]
        prev_ok, cur_ok = prev_row.get("status", "ok") == "ok", cur_row.get("status", "ok") == "ok"
        if prev_ok and not cur_ok:
            report.newly_failed.append(shard_label(key))
        if not (prev_ok and cur_ok):
            continue
        report.compared_shards += 1
        for j, rule in enumerate(RULES):
            ci = None
            a, b = samples(prev_r.get(key), rule), samples(cur_r.get(key), rule)
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


def empty_report(run_url: str, thresholds: Thresholds, n_resamples: int, confidence: float) -> RegressionReport:
    """A report of ``run_url`` that compared nothing yet (status ``no-previous``)."""
    parent, rid = split_run_url(run_url)
    name = load_manifest(run_url).name if has_manifest(run_url) else None
    return RegressionReport(name=name or split_run_url(parent)[1], run_id=rid, run_url=run_url,
                            status="no-previous", thresholds=thresholds, confidence=confidence,
                            n_resamples=n_resamples)


def _config_hash(run_url: str) -> str | None:
    try:
        return load_manifest(run_url).config_hash
    except StorageError:
        return None
