"""Comparing two runs shard by shard, metric by metric, against thresholds and noise.

Each shard (experiment × dataset × bucket × level) is compared metric by metric against a relative
threshold; for p95 latency, p95 TTFT, the error rate and closed-loop rates a seeded bootstrap of
the per-request records (`noise`) says whether the change is larger than run-to-run variation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fmbench import storage
from fmbench.errors import StorageError
from fmbench.regression.history import split_run_url
from fmbench.regression.models import (
    LATENCY_METRICS,
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
                   thresholds: Thresholds, ci: tuple[float, float] | None = None,
                   caveat: str | None = None) -> MetricChange | None:
    """Compare one metric of one shard; None when either value is missing.

    Args:
        ci: bootstrap interval of ``current - previous`` (see `bootstrap_diff_ci`), if per-request
            data was available.
        caveat: why either run's measurement of this shard cannot be trusted; the change is then
            reported, but as neither a regression nor an improvement.
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
        significant=significant, caveat=caveat,
        regression=worse and significant is not False and caveat is None,
        improvement=better and improved_beyond_noise is not False and caveat is None,
    )


@dataclass(frozen=True)
class _Caveat:
    """Why a run's measurement of a shard is in doubt: the shard is invalid (``late_s`` None: nothing
    in it is trusted), or the simulated endpoint was late by up to ``late_s`` (inf: saturated)."""

    reason: str
    late_s: float | None = None


def _shard_caveats(run_url: str) -> dict[ShardKey, _Caveat]:
    """Per shard, why the run's measurement of it is in doubt: the shard was invalid (e.g. its client
    saturated: nothing in it is trusted), or the simulated endpoint's own stamps say it was late or
    saturated (a busy machine: its chunks went out up to ``late_s`` after their due time; saturated,
    by an amount its stamps do not bound, as requests also queued before it stamped them)."""
    if not has_manifest(run_url):
        return {}
    out: dict[ShardKey, _Caveat] = {}
    for shard in load_manifest(run_url).shards:
        try:
            key = shard_key(shard)
        except (KeyError, TypeError, ValueError):
            continue
        sim = shard.get("simulator") or {}
        if shard.get("valid") is False:
            out[key] = _Caveat(f"invalid: {shard.get('invalid_reason') or 'see the report'}")
        elif sim.get("late") or sim.get("saturated"):
            late_ms = sim.get("lateness_p99_ms")
            out[key] = _Caveat(str(sim.get("verdict") or "simulator late or saturated"),
                               math.inf if sim.get("saturated") or late_ms is None else float(late_ms) / 1e3)
    return out


def _explained(rule: MetricRule, prev_row: dict[str, Any], cur_row: dict[str, Any],
               caveats: list[_Caveat], thresholds: Thresholds) -> bool:
    """Could the doubt about the measurement account for this metric's change? An invalid shard:
    always. A late or saturated simulator only delays answers, it fails none: never the error rate;
    a latency, when the change is no larger than its lateness (any, saturated); closed-loop rates and
    cost, which follow the latency, when the change is no larger than its lateness over the mean
    latency and the share of failed requests held (else fewer successes, not delay, moved them)."""
    if any(c.late_s is None for c in caveats):
        return True
    late = max(c.late_s or 0.0 for c in caveats)
    prev, cur = prev_row.get(rule.metric), cur_row.get(rule.metric)
    if rule.metric == "error_rate" or prev is None or cur is None:
        return False
    if rule.metric in LATENCY_METRICS:
        return abs(float(cur) - float(prev)) <= late
    e0, e1 = prev_row.get("error_rate"), cur_row.get("error_rate")
    if not (isinstance(e0, (int, float)) and isinstance(e1, (int, float))
            and abs(float(e1) - float(e0)) < thresholds.error_rate_min_abs):  # NaN: not held either
        return False
    means = [r.get("latency_mean_s") for r in (prev_row, cur_row)]
    change = _relative(float(prev), float(cur))
    if change is None or not all(isinstance(m, (int, float)) and m > 0 for m in means):
        return False
    return abs(change) <= late / min(float(m) for m in means if m is not None)


def _caveat_text(prev_id: str | None, prev: _Caveat | None, cur_id: str, cur: _Caveat | None) -> str:
    return "; ".join(f"{run}: {c.reason}" for run, c in ((prev_id or "previous", prev), (cur_id, cur)) if c)


def compare_runs(previous_url: str, current_url: str, thresholds: Thresholds | None = None, *,
                 n_resamples: int = 400, confidence: float = 0.95, seed: int = 0) -> RegressionReport:
    """Compare two successful runs shard by shard (nothing is written).

    Raises:
        StorageError: a run's metrics cannot be read.
    """
    thresholds = thresholds or Thresholds()
    prev_m, cur_m = _metrics_by_shard(previous_url), _metrics_by_shard(current_url)
    prev_r, cur_r = per_request(previous_url), per_request(current_url)
    prev_c, cur_c = _shard_caveats(previous_url), _shard_caveats(current_url)
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
        doubts = [c for c in (prev_c.get(key), cur_c.get(key)) if c is not None]
        why = _caveat_text(report.previous_run_id, prev_c.get(key), report.run_id, cur_c.get(key))
        for j, rule in enumerate(RULES):
            ci = None
            a, b = samples(prev_r.get(key), rule), samples(cur_r.get(key), rule)
            prev_value = prev_row.get(rule.metric)
            if a.size and b.size and rule.statistic in ("p95", "mean"):
                ci = bootstrap_diff_ci(a, b, rule.statistic, n_resamples, confidence, seed + 7919 * i + j)
            elif a.size and b.size and rule.statistic == "rate" and key[4] is None and prev_value:
                # Little's law holds for closed-loop shards only; open-loop rates follow the schedule
                ci = bootstrap_rate_ci(a, b, float(prev_value), n_resamples, confidence, seed + 7919 * i + j)
            caveat = why if doubts and _explained(rule, prev_row, cur_row, doubts, thresholds) else None
            change = compare_metric(key, rule, prev_value, cur_row.get(rule.metric), thresholds, ci, caveat)
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
