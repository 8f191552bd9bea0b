"""SLO verdicts per shard: which objectives a configuration meets, and how far it is from them.

A shard meets its SLOs when every configured objective holds: p95 latency, p95 TTFT and p95 TPOT at
or under their limits, and error rate at or under ``max_error_rate``. A metric that was not measured
(no successful request, or no TPOT without streaming) fails its objective: an all-failed shard never
meets SLOs. A non-streamed answer's TTFT is its whole latency (its first token arrives with its last),
and is judged so.

"How far" (``slo_worst_ratio``) is the largest observed/limit ratio over the objectives; 1.0 or less
means every objective holds. For the error rate with a limit of 0 (the default), any error scores
``1 + error_rate / 0.01`` (one point per percentage point), so zero-tolerance failures still rank.
Unmeasured metrics score infinity.

An open-loop shard whose endpoint was overloaded (``overloaded``, `fmbench.loadgen.overload`: it
completed requests measurably slower than they arrived) fails whatever its percentiles say: its queue
grew for the whole shard, so a longer shard would have measured longer latencies. It scores the
offered rate over the completed rate (1 / ``completion_rate``, above 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from fmbench.config import SLOConfig

_CHECKS = (
    # (column, slo field, label, unit)
    ("latency_p95_s", "latency_p95_s", "p95 latency", "s"),
    ("ttft_p95_s", "ttft_p95_s", "p95 TTFT", "s"),
    ("tpot_p95_s", "tpot_p95_s", "p95 TPOT", "s"),
)


@dataclass(frozen=True, slots=True)
class SLOCheck:
    """One objective evaluated on one shard."""

    label: str
    observed: float | None
    limit: float
    unit: str  # "s" or "%"
    passed: bool
    ratio: float

    def describe(self) -> str:
        """E.g. ``p95 latency 1.20 s ≤ 2.00 s`` or ``error rate 3.0% > 1.0%``."""
        # Both numbers in one unit, chosen by the limit: sub-half-second limits read better in ms.
        unit = self.unit if self.unit == "%" else "ms" if self.limit < 0.5 else "s"
        if self.observed is None:
            return f"{self.label} not measured (limit {_fmt(self.limit, unit)})"
        op = "≤" if self.passed else ">"
        # As many decimals as it takes for the two to read as they compare: a failed 0.133 % against a
        # 0.1 % limit is not "0.1% > 0.1%", and a 2-ms p95 is not "0.00 s".
        extra = 0
        while True:
            seen, limit = _fmt(self.observed, unit, extra), _fmt(self.limit, unit, extra)
            distinct = seen != limit or self.observed == self.limit
            shown = self.observed == 0 or _fmt(0.0, unit, extra) != seen
            if (distinct and shown) or extra >= 4:
                return f"{self.label} {seen} {op} {limit}"
            extra += 1


def _fmt(value: float, unit: str, extra: int = 0) -> str:
    """``value`` in ``unit`` at its usual precision, or ``extra`` decimals more."""
    if unit == "%":
        return f"{value * 100:.{1 + extra}f}%"
    if unit == "ms":
        ms = value * 1000
        return f"{ms:.{1 + extra}f} ms" if ms < 10 or extra else f"{ms:,.0f} ms"
    return f"{value:.{2 + extra}f} s"


def _valid_number(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def slo_checks(row: dict[str, Any], slo: SLOConfig | Any) -> list[SLOCheck]:
    """Evaluate every configured objective of ``slo`` (an `SLOConfig`) on one metrics row; None (no SLO
    given) checks only that no request failed, as `evaluate_slo` judges such a row."""
    if slo is None:
        slo = _NoSLO()
    out = []
    for column, field, label, unit in _CHECKS:
        limit = getattr(slo, field, None)
        if limit is None:
            continue
        observed = _valid_number(row.get(column))
        if observed is None:
            out.append(SLOCheck(label, None, limit, unit, False, math.inf))
        else:
            out.append(SLOCheck(label, observed, limit, unit, observed <= limit, observed / limit))
    limit = float(getattr(slo, "max_error_rate", 0.0) or 0.0)
    err = _valid_number(row.get("error_rate"))
    if err is None:
        out.append(SLOCheck("error rate", None, limit, "%", False, math.inf))
    else:
        if limit > 0:
            ratio = err / limit
        else:
            ratio = 0.0 if err == 0 else 1.0 + err / 0.01
        out.append(SLOCheck("error rate", err, limit, "%", err <= limit, ratio))
    return out


def evaluate_slo(metrics: pl.DataFrame, slo: SLOConfig | None) -> pl.DataFrame:
    """Add ``meets_slo`` (bool), ``slo_failures`` (text, empty when met) and ``slo_worst_ratio``.

    Args:
        metrics: per-shard metrics (as from `summarize`).
        slo: an `SLOConfig`; None checks only that no request failed.
    """
    meets, failures, worst = [], [], []
    for row in metrics.iter_rows(named=True):
        if not row.get("requests"):
            meets.append(False)
            failures.append("no measured requests" + (f" (shard {row['status']})" if row.get("status") else ""))
            worst.append(math.inf)
            continue
        checks = slo_checks(row, slo)
        bad = [c.describe() for c in checks if not c.passed]
        ratio = max((c.ratio for c in checks), default=0.0)
        if row.get("overloaded"):
            rate = _valid_number(row.get("completion_rate"))
            bad.insert(0, overload_text(rate))
            ratio = max(ratio, 1.0 / rate if rate else math.inf)
        meets.append(not bad)
        failures.append("; ".join(bad))
        worst.append(ratio)
    drop = [c for c in ("meets_slo", "slo_failures", "slo_worst_ratio") if c in metrics.columns]
    return metrics.drop(drop).with_columns(
        pl.Series("meets_slo", meets, dtype=pl.Boolean()),
        pl.Series("slo_failures", failures, dtype=pl.String()),
        pl.Series("slo_worst_ratio", worst, dtype=pl.Float64()),
    )


def overload_text(completion_rate: float | None) -> str:
    """The SLO failure of an overloaded shard, e.g. ``endpoint overloaded (completed 61% of the offered rate)``."""
    rate = f" (completed {completion_rate:.0%} of the offered rate)" if completion_rate is not None else ""
    return f"endpoint overloaded{rate}"


class _NoSLO:
    max_error_rate = 0.0
