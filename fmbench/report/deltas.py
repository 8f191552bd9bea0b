"""The changes between compared runs, shard by shard, each marked significant or within noise.

The first run is the baseline; every other run's shards are matched to its shards by experiment,
dataset, bucket and load (or, when each run has a single experiment under different names, as when
two serving stacks are compared, by dataset, bucket and load alone). The noise of each change is the
seeded bootstrap regression detection uses (`fmbench.regression`): per-request values of both runs
are resampled and the change is *significant* when the confidence interval of the difference
excludes zero. Throughput and instance-priced cost of closed-loop shards get their interval from
every request's time in flight and outcome (failures included) through Little's law, as in regression
detection; cost under token pricing and open-loop throughput get none ("no noise estimate").
Evaluated accuracy is compared per experiment, dataset and bucket (it does not depend on the load),
its noise the same bootstrap of the per-request scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from fmbench.metrics import good_request
from fmbench.metrics.cost import usd
from fmbench.records import final_attempts
from fmbench.regression import bootstrap_diff_ci, bootstrap_rate_ci
from fmbench.regression.noise import rate_samples

if TYPE_CHECKING:  # numpy is imported where it is used: a one-run report never needs it (0.2-0.4 s)
    import numpy as np

#: How a metric is compared: (metrics column, label, better direction, per-request source, statistic).
#: Sources: a requests column, "itl" (pooled gaps), "good" (goodput indicator), "flight" (every request's time in
#: flight and outcome: Little's law, `fmbench.regression.noise.rate_samples`).
_DELTAS: tuple[tuple[str, str, Literal["up", "down"], str, str], ...] = (
    ("latency_p95_s", "p95 latency", "down", "latency_s", "p95"),
    ("ttft_p95_s", "p95 TTFT", "down", "ttft_s", "p95"),
    ("itl_p95_s", "p95 ITL", "down", "itl", "p95"),
    ("transactions_per_min", "throughput (txn/min)", "up", "flight", "rate"),
    ("goodput_share", "goodput (share of requests)", "up", "good", "mean"),
    ("cost_per_10k_txn", "cost per 10k txn", "down", "flight", "cost"),
)

_LOAD = ["dataset", "bucket", "concurrency", "request_rate"]
_SAMPLE_COLS = ["experiment", *_LOAD, "warmup", "ok", "latency_s", "ttft_s", "tpot_s", "output_tokens", "itl_s",
                "chunks", "t_start", "t_end"]  # (chunks: the goodput rule's one-token streamed answer)


@dataclass(frozen=True, slots=True)
class Delta:
    """One metric of one shard: a run against the baseline run."""

    shard: str
    baseline: str
    run: str
    metric: str
    label: str
    before: float
    after: float
    ci: tuple[float, float] | None
    verdict: Literal["better", "worse", "unchanged", "negligible", "within noise", "no noise estimate"]

    @property
    def change(self) -> float | None:
        """Relative change (after / before - 1), None from zero."""
        if self.before == 0:
            return 0.0 if self.after == 0 else None
        return self.after / self.before - 1.0


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _match(base: pl.DataFrame, other: pl.DataFrame) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_exp = {e for e in base["experiment"].unique().to_list()} & set(other["experiment"].unique().to_list())
    keys = ["experiment", *_LOAD] if by_exp else _LOAD
    if not by_exp and (base["experiment"].n_unique() > 1 or other["experiment"].n_unique() > 1):
        return []  # different experiments, several per run: no fair pairing
    index = {tuple(r[k] for k in keys): r for r in other.iter_rows(named=True)}
    pairs = []
    for r in base.iter_rows(named=True):
        o = index.get(tuple(r[k] for k in keys))
        if o is not None and (r.get("requests") or 0) > 0 and (o.get("requests") or 0) > 0:
            pairs.append((r, o))
    return pairs


_Key = tuple[Any, ...]


def _by_shard(requests: pl.LazyFrame | None, slo: Any) -> dict[_Key, pl.DataFrame]:
    """A run's measured requests, read once, split by (experiment, dataset, bucket, load)."""
    if requests is None:
        return {}
    names = requests.collect_schema().names()
    good = good_request(slo)
    # a retried request is its final attempt, as in the metrics compared
    df = (final_attempts(requests).filter(~pl.col("warmup").fill_null(False))
          .select([c for c in _SAMPLE_COLS if c in names])
          .with_columns([] if "chunks" in names else [pl.lit(None, dtype=pl.Int64()).alias("chunks")])  # older records
          .with_columns(good.alias("_good") if good is not None else pl.lit(None, dtype=pl.Boolean()).alias("_good"))
          .collect())
    return {_shard_key(dict(zip(["experiment", *_LOAD], k))): part
            for k, part in df.partition_by(["experiment", *_LOAD], as_dict=True).items()}


def _shard_key(row: dict[str, Any]) -> _Key:
    rate = row.get("request_rate")
    return (row["experiment"], row["dataset"], row["bucket"], row["concurrency"],
            None if rate is None else float(rate))


def _samples(df: pl.DataFrame | None, source: str) -> np.ndarray:
    import numpy as np

    if df is None or df.is_empty():
        return np.empty(0)
    ok = df.filter(pl.col("ok").fill_null(False))
    if source == "itl":
        if "itl_s" not in df.columns:
            return np.empty(0)
        return ok["itl_s"].explode().drop_nulls().to_numpy().astype(np.float64)
    if source == "good":
        return df["_good"].cast(pl.Float64).drop_nulls().to_numpy()
    if source == "flight":  # every request's time in flight and outcome (Little's law, with failures)
        return rate_samples(df)
    return ok[source].drop_nulls().to_numpy().astype(np.float64)


#: A change smaller than this (relative) is marked negligible whatever its interval: two runs of one
#: deterministic configuration differ by fractions of a percent that a bootstrap calls significant.
NEGLIGIBLE = 0.01
#: Fewer measured values than this on either side give no noise estimate: a bootstrap of a handful of
#: values (one, for a one-request shard) resamples the same few and its interval has next to no width.
MIN_SAMPLES = 10


def _ci(stat: str, a: np.ndarray, b: np.ndarray, before: float, closed_loop: bool, token_priced: bool,
        n_resamples: int, confidence: float, seed: int) -> tuple[float, float] | None:
    if a.size < MIN_SAMPLES or b.size < MIN_SAMPLES:
        return None
    if stat in ("p95", "mean"):
        low, high = bootstrap_diff_ci(a, b, stat, n_resamples, confidence, seed)  # type: ignore[arg-type]
    elif stat == "rate" and closed_loop:
        low, high = bootstrap_rate_ci(a, b, before, n_resamples, confidence, seed)
    elif stat == "cost" and closed_loop and not token_priced:
        # an instance's cost per transaction scales with 1 / throughput: the rate's interval, inverted
        low, high = bootstrap_rate_ci(b, a, before, n_resamples, confidence, seed)
    else:
        return None
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def _verdict(before: float, after: float, ci: tuple[float, float] | None,
             better: Literal["up", "down"]) -> Literal["better", "worse", "unchanged", "negligible",
                                                       "within noise", "no noise estimate"]:
    if after == before:
        return "unchanged"
    if before != 0 and abs(after / before - 1.0) < NEGLIGIBLE:
        return "negligible"
    if ci is None:
        return "no noise estimate"
    if ci[0] <= 0 <= ci[1]:
        return "within noise"
    up = ci[0] > 0
    return "better" if up == (better == "up") else "worse"


def run_deltas(runs: list[tuple[str, pl.DataFrame, pl.LazyFrame | None]], slo: Any, *, n_resamples: int = 400,
               confidence: float = 0.95, seed: int = 0) -> tuple[list[Delta], list[str]]:
    """Every run after the first against the first, per matched shard and metric.

    Args:
        runs: (label, per-shard metrics, per-request records or None) per run, baseline first;
            experiment names unprefixed.
        slo: the `SLOConfig` every run is judged against (its per-request limits define goodput).
        n_resamples, confidence, seed: the bootstrap (as `fmbench.regression.compare_runs`).

    Returns:
        The deltas, and a line per run none of whose shards has a counterpart in the first run (so no
        change of it is shown), saying why.
    """
    out: list[Delta] = []
    unpaired: list[str] = []
    if len(runs) < 2:
        return out, unpaired
    base_label, base_m, base_r = runs[0]
    base_parts = _by_shard(base_r, slo)
    for label, metrics, requests in runs[1:]:
        pairs = _match(base_m, metrics)
        if not pairs:
            unpaired.append(f"No change of {label} against {base_label} is shown: {_why_unpaired(base_m, metrics)}.")
            continue
        parts = _by_shard(requests, slo)
        for i, (b, o) in enumerate(pairs):
            rb, ro = base_parts.get(_shard_key(b)), parts.get(_shard_key(o))
            load = f"{b['request_rate']:g} req/s" if b.get("request_rate") is not None else f"c={b['concurrency']}"
            shard = f"{b['dataset']} {b['bucket']} {load}"
            for j, (metric, name, better, source, stat) in enumerate(_DELTAS):
                before, after = _num(b.get(metric)), _num(o.get(metric))
                if before is None or after is None:
                    continue
                ci = _ci(stat, _samples(rb, source), _samples(ro, source), before, b.get("request_rate") is None,
                         b.get("price_model") == "token" or o.get("price_model") == "token",
                         n_resamples, confidence, seed + 7919 * i + j)
                out.append(Delta(shard=shard, baseline=f"{base_label}/{b['experiment']}",
                                 run=f"{label}/{o['experiment']}", metric=metric, label=name, before=before,
                                 after=after, ci=ci, verdict=_verdict(before, after, ci, better)))
    return out, unpaired


def _why_unpaired(base: pl.DataFrame, other: pl.DataFrame) -> str:
    """Why no shard of a run has a counterpart in the baseline (`_match` found none)."""
    base_exps, exps = set(base["experiment"].unique().to_list()), set(other["experiment"].unique().to_list())
    if not base_exps & exps and (len(base_exps) > 1 or len(exps) > 1):
        return (f"their experiments differ ({', '.join(sorted(base_exps))} against {', '.join(sorted(exps))}) "
                "and a run has several, so no shard has a fair counterpart; compare runs of the same "
                "experiments, or of one experiment each")
    return "no shard of it was measured at a load (and for an experiment) the first run measured too"


def accuracy_deltas(runs: list[tuple[str, pl.DataFrame]], label: str, *, n_resamples: int = 400,
                    confidence: float = 0.95, seed: int = 0) -> list[Delta]:
    """Every run's evaluated accuracy after the first against the first, per experiment × dataset × bucket.

    Args:
        runs: (label, per-request accuracy values: `fmbench.quality.summary.accuracy_values`) per run,
            baseline first, experiment names unprefixed; every run scored with the same metric.
        label: the metric's name in the table (e.g. ``accuracy (exact match)``).
    """
    import numpy as np

    out: list[Delta] = []
    if len(runs) < 2:
        return out
    keys = ["experiment", "dataset", "bucket"]
    base_label, base = runs[0]
    base_parts = base.partition_by(keys, as_dict=True)
    for label_run, values in runs[1:]:
        parts = values.partition_by(keys, as_dict=True)
        shared = set(base_parts) & set(parts)
        if not shared and base["experiment"].n_unique() == 1 and values["experiment"].n_unique() == 1:
            # one experiment per run under different names (two serving stacks): pair by dataset bucket
            by_bucket = {k[1:]: k for k in parts}
            pairs = [(k, by_bucket[k[1:]]) for k in base_parts if k[1:] in by_bucket]
        else:
            pairs = [(k, k) for k in base_parts if k in shared]
        for i, (kb, ko) in enumerate(sorted(pairs)):
            a = base_parts[kb]["value"].to_numpy().astype(np.float64)
            b = parts[ko]["value"].to_numpy().astype(np.float64)
            before, after = float(a.mean()), float(b.mean())
            ci = None
            if a.size >= MIN_SAMPLES and b.size >= MIN_SAMPLES:
                low, high = bootstrap_diff_ci(a, b, "mean", n_resamples, confidence, seed + 7919 * i)
                ci = (low, high) if math.isfinite(low) and math.isfinite(high) else None
            out.append(Delta(shard=f"{kb[1]} {kb[2]}", baseline=f"{base_label}/{kb[0]}", run=f"{label_run}/{ko[0]}",
                             metric="accuracy", label=label, before=before, after=after, ci=ci,
                             verdict=_verdict(before, after, ci, "up")))
    return out


def _fmt(metric: str, v: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if metric.endswith("_s"):
        return f"{v * 1000:{sign},.1f} ms"
    if metric in ("goodput_share", "accuracy"):
        return f"{v * 100:{sign}.1f}%" if not signed else f"{v * 100:+.1f} pt"
    if metric.startswith("cost"):
        return f"{'+' if signed and v >= 0 else '-' if v < 0 else ''}{usd(abs(v))}"
    return f"{v:{sign},.1f}"


_MARK = {"better": "✔ better", "worse": "✘ worse", "unchanged": "= unchanged",
         "negligible": f"≈ negligible (< {NEGLIGIBLE:.0%})", "within noise": "≈ within noise",
         "no noise estimate": "? no noise estimate"}


def delta_rows(deltas: list[Delta], confidence: float = 0.95) -> list[dict[str, str]]:
    """The deltas as formatted table rows."""
    rows = []
    for d in deltas:
        change = d.change
        rows.append({
            "Shard": d.shard, "Baseline": d.baseline, "Run": d.run, "Metric": d.label,
            "Before": _fmt(d.metric, d.before), "After": _fmt(d.metric, d.after),
            "Change": "–" if change is None else f"{change * 100:+.1f}%",
            f"{confidence:.0%} CI of difference": "–" if d.ci is None else
            f"{_fmt(d.metric, d.ci[0], True)} … {_fmt(d.metric, d.ci[1], True)}",
            "Verdict": _MARK[d.verdict],
        })
    return rows


def delta_note(n_resamples: int = 400, confidence: float = 0.95) -> str:
    """How the changes were judged, for the report."""
    return (f"Each later run against the first, shard by shard. A change is marked better or worse only when the "
            f"{confidence:.0%} interval of a seeded bootstrap ({n_resamples} resamples of the per-request values, as "
            f"regression detection uses) excludes zero, else it is within noise; a change of less than {NEGLIGIBLE:.0%} "
            f"is negligible whatever its interval, and fewer than {MIN_SAMPLES} measured values on either side give "
            "no noise estimate. p95 ITL resamples the pooled gaps; "
            "goodput the per-request good/not-good outcome; closed-loop throughput and instance-priced cost take "
            "their interval from every request's time in flight and outcome (Little's law, failures included). "
            "Token-priced cost and open-loop throughput have no noise estimate. Evaluated accuracy is compared per dataset bucket (all loads together), resampling "
            "the per-request scores (or the judge panel's decided verdicts).")
