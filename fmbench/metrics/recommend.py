"""Pick, per dataset bucket, the configuration to buy, and say why in one sentence a manager can read.

Among valid shards that meet every SLO: the *lowest cost* one has the smallest cost per 10k
transactions (ties, within 1 %: more transactions/min; the sentence names the configurations within
1 % of both), the *highest throughput* one the most transactions/min (ties, within 1 %: lower cost). When nothing meets the SLOs, the *closest* shard is the one with the smallest
worst observed/limit ratio (`fmbench.metrics.slo`), ties broken by throughput. Without prices, only
throughput ranks and the sentence says cost is unknown. Invalid shards (e.g. a saturated client)
and overloaded ones (an endpoint whose queue grew for the whole shard, `fmbench.loadgen.overload`)
are never recommended, not even as the closest.

When per-request SLOs are set (``slo.ttft_s``/``tpot_s``/``latency_s``), ranking is by goodput
instead: the *lowest cost* shard has the smallest cost per 10k *good* requests (the most goodput per
dollar) and the *highest throughput* one the most good requests per second, since a request that
missed its limits is one the user did not get.

With ``slo.min_accuracy`` (answer quality, from the run's evaluation), a shard whose experiment
answers that dataset bucket less accurately, or was not evaluated, is not eligible however cheap
or fast it is, and the sentence names the cheaper configurations it passed over and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from fmbench.config import SLOConfig
from fmbench.metrics.cost import usd
from fmbench.metrics.slo import slo_checks


@dataclass(frozen=True, slots=True)
class Choice:
    """One configuration (a shard's row) put forward by `recommend`."""

    experiment: str
    concurrency: int | None
    request_rate: float | None
    instance_type: str | None
    instance_count: int | None
    meets_slo: bool
    cost_per_10k_txn: float | None
    transactions_per_min: float | None
    output_tokens_per_s: float | None
    latency_p95_s: float | None
    ttft_p95_s: float | None
    tpot_p95_s: float | None
    error_rate: float | None
    slo_summary: str
    worst_ratio: float
    goodput_per_s: float | None = None
    goodput_share: float | None = None
    cost_per_10k_good: float | None = None
    accuracy: float | None = None
    accuracy_lo: float | None = None
    accuracy_hi: float | None = None

    @property
    def accuracy_text(self) -> str:
        """``accuracy 81.0% (95% CI 74.2–86.4%)``, or ``not evaluated``."""
        if self.accuracy is None:
            return "not evaluated"
        ci = ""
        if self.accuracy_lo is not None and self.accuracy_hi is not None:
            ci = f" (95% CI {self.accuracy_lo:.1%}–{self.accuracy_hi:.1%})"
        return f"accuracy {self.accuracy:.1%}{ci}"

    @property
    def load(self) -> str:
        """``concurrency 8`` or ``2.5 req/s`` (open loop)."""
        if self.request_rate is not None:
            cap = f", at most {self.concurrency} in flight" if self.concurrency else ""
            return f"{self.request_rate:g} req/s{cap}"
        return f"concurrency {self.concurrency}"

    @property
    def label(self) -> str:
        """``sim-small at concurrency 8`` (instance type added when known)."""
        inst = ""
        if self.instance_type:
            count = f"{self.instance_count} x " if self.instance_count and self.instance_count > 1 else ""
            inst = f" ({count}{self.instance_type})"
        return f"{self.experiment}{inst} at {self.load}"


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The recommendation for one (dataset, bucket)."""

    dataset: str
    bucket: str
    bucket_min: int | None
    bucket_max: int | None
    status: Literal["meets_slo", "none_meets_slo", "below_accuracy", "no_data"]
    cost_known: bool
    lowest_cost: Choice | None
    highest_throughput: Choice | None
    closest: Choice | None
    reasoning: str
    candidates: int = 0
    excluded_invalid: list[str] = field(default_factory=list)
    excluded_failed: list[str] = field(default_factory=list)  # shards that could not be measured
    excluded_overloaded: list[str] = field(default_factory=list)  # measured, but the endpoint fell behind
    excluded_accuracy: list[Choice] = field(default_factory=list)

    @property
    def best(self) -> Choice | None:
        """The single configuration to act on: lowest cost, else highest throughput, else closest."""
        return self.lowest_cost or self.highest_throughput or self.closest


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _choice(row: dict[str, Any], slo: Any) -> Choice:
    checks = slo_checks(row, slo)
    return Choice(
        experiment=row["experiment"],
        concurrency=row.get("concurrency"),
        request_rate=_num(row.get("request_rate")),
        instance_type=row.get("instance_type"),
        instance_count=row.get("instance_count"),
        meets_slo=bool(row.get("meets_slo")),
        cost_per_10k_txn=_num(row.get("cost_per_10k_txn")),
        transactions_per_min=_num(row.get("transactions_per_min")),
        output_tokens_per_s=_num(row.get("output_tokens_per_s")),
        latency_p95_s=_num(row.get("latency_p95_s")),
        ttft_p95_s=_num(row.get("ttft_p95_s")),
        tpot_p95_s=_num(row.get("tpot_p95_s")),
        error_rate=_num(row.get("error_rate")),
        slo_summary=", ".join(c.describe() for c in checks),
        worst_ratio=max((c.ratio for c in checks), default=0.0),
        goodput_per_s=_num(row.get("goodput_per_s")),
        goodput_share=_num(row.get("goodput_share")),
        cost_per_10k_good=_num(row.get("cost_per_10k_good")),
        accuracy=_num(row.get("accuracy")),
        accuracy_lo=_num(row.get("accuracy_lo")),
        accuracy_hi=_num(row.get("accuracy_hi")),
    )


#: Costs (or throughputs) within this fraction of each other are one value for the recommendation:
#: it picks among them by the other measure, and names the configurations it cannot tell apart.
TIE = 0.01


def _cost_key(c: Choice) -> float:
    """A choice's cost per 10k transactions for ordering: unknown after every known cost, 0 included."""
    return math.inf if c.cost_per_10k_txn is None else c.cost_per_10k_txn


def _accuracy(row: dict[str, Any]) -> float:
    """A row's accuracy for ordering: not evaluated sorts below every measured accuracy, 0 included."""
    a = _num(row.get("accuracy"))
    return -1.0 if a is None else a


def _money(x: float | None) -> str:
    return "unknown cost" if x is None else usd(x)


def _tpm(x: float | None) -> str:
    return "unknown throughput" if x is None else f"{x:,.0f} transactions/min"


def _prompts(dataset: str, lo: int | None, hi: int | None, bucket: str) -> str:
    size = f"{lo:,}–{hi:,} tokens" if lo is not None and hi is not None else f"bucket {bucket}"
    return f"For prompts of {size} (dataset {dataset})"


def _not_considered(failed: list[str], invalid: list[str], overloaded: list[str] | None = None) -> str:
    """E.g. " (1 failed and 2 invalid shards not considered.)": a failed shard is one the report lists
    as failed (not measured), an invalid one is in its list of invalid shards (measured, not trusted),
    an overloaded one in its list of overloaded endpoints (measured, but the queue only grew)."""
    groups = (("failed", failed), ("invalid", invalid), ("overloaded", overloaded or []))
    parts = [f"{len(names)} {what}" for what, names in groups if names]
    n = sum(len(names) for _, names in groups)
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)
    return f" ({listed} shard{'s' if n != 1 else ''} not considered.)" if parts else ""


def _sentence(rec_args: dict[str, Any]) -> str:
    head = _prompts(rec_args["dataset"], rec_args["bucket_min"], rec_args["bucket_max"], rec_args["bucket"])
    cheap: Choice | None = rec_args["lowest_cost"]
    fast: Choice | None = rec_args["highest_throughput"]
    close: Choice | None = rec_args["closest"]
    tail = (_not_considered(rec_args["excluded_failed"], rec_args["excluded_invalid"],
                            rec_args["excluded_overloaded"]) + _accuracy_tail(rec_args))
    if rec_args["status"] == "no_data":
        kept_up = " at a rate the endpoint kept up with" if rec_args["excluded_overloaded"] else ""
        return (f"{head}, no valid shard produced successful measurements{kept_up}, so nothing can be "
                f"recommended.{tail}")
    if rec_args["status"] == "below_accuracy":
        assert close is not None
        if close.accuracy is None:
            return (f"{head}, no configuration that meets the SLOs has an evaluated accuracy (slo.min_accuracy "
                    f"{rec_args['min_accuracy']:.0%}), so none is recommended; see Answer quality for what is missing.")
        return (f"{head}, every configuration that meets the SLOs answers below the minimum accuracy of "
                f"{rec_args['min_accuracy']:.0%}, so none is recommended; the most accurate is {close.label} "
                f"({close.accuracy_text}) at {_money(close.cost_per_10k_txn)} per 10k transactions.")
    if rec_args["status"] == "none_meets_slo":
        assert close is not None
        cost = (f" at {_money(close.cost_per_10k_txn)} per 10k transactions"
                if close.cost_per_10k_txn is not None else "")
        return (f"{head}, no configuration meets every SLO; the closest is {close.label} "
                f"({close.slo_summary}){cost}, {_tpm(close.transactions_per_min)}.{tail}")
    if rec_args.get("by_goodput"):
        return _goodput_sentence(head, cheap, fast) + tail
    if cheap is not None:
        text = (f"{head}, {cheap.label} meets every SLO ({cheap.slo_summary}) at the lowest cost: "
                f"{_money(cheap.cost_per_10k_txn)} per 10k transactions, {_tpm(cheap.transactions_per_min)}.")
        if fast is not None and (fast.experiment, fast.concurrency, fast.request_rate) != (
                cheap.experiment, cheap.concurrency, cheap.request_rate):
            cost = (f" at {_money(fast.cost_per_10k_txn)} per 10k transactions"
                    if fast.cost_per_10k_txn is not None else "")
            text += f" For the most throughput within the SLOs, choose {fast.label}: {_tpm(fast.transactions_per_min)}{cost}."
        return text + tail
    assert fast is not None
    return (f"{head}, {fast.label} meets every SLO ({fast.slo_summary}) with the highest throughput: "
            f"{_tpm(fast.transactions_per_min)}; cost is unknown (no pricing configured).{tail}")


def _accuracy_tail(rec_args: dict[str, Any]) -> str:
    """Which configurations meeting the SLOs were passed over for answering worse (or not evaluated)."""
    worse: list[Choice] = rec_args.get("excluded_accuracy") or []
    if not worse or rec_args["status"] != "meets_slo":
        return ""
    best: dict[str, Choice] = {}
    for c in worse:  # one mention per experiment: its cheapest load
        if c.experiment not in best or _cost_key(c) < _cost_key(best[c.experiment]):
            best[c.experiment] = c
    parts = [f"{c.experiment} ({c.accuracy_text}, {_money(c.cost_per_10k_txn)} per 10k transactions)"
             for c in sorted(best.values(), key=_cost_key)]
    return (f" Not eligible because it answers below the minimum accuracy of {rec_args['min_accuracy']:.0%}: "
            f"{'; '.join(parts)}.")


def _goodput(c: Choice) -> str:
    share = "unknown share" if c.goodput_share is None else f"{c.goodput_share:.0%} of requests"
    rate = "" if c.goodput_per_s is None else f", {c.goodput_per_s:,.2f} good requests/s"
    return f"{share} within the per-request SLOs{rate}"


def _goodput_sentence(head: str, cheap: Choice | None, fast: Choice | None) -> str:
    if cheap is not None:
        text = (f"{head}, {cheap.label} meets every SLO ({cheap.slo_summary}) with the most goodput per dollar: "
                f"{_goodput(cheap)}, {_money(cheap.cost_per_10k_good)} per 10k good requests.")
        if fast is not None and (fast.experiment, fast.concurrency, fast.request_rate) != (
                cheap.experiment, cheap.concurrency, cheap.request_rate):
            text += f" For the most goodput, choose {fast.label}: {_goodput(fast)}."
        return text
    assert fast is not None
    why = "no pricing configured" if fast.cost_per_10k_txn is None else "no request met the per-request SLOs"
    return (f"{head}, {fast.label} meets every SLO ({fast.slo_summary}) with the most goodput: {_goodput(fast)}; "
            f"cost per good request is unknown ({why}).")


def recommend(metrics: pl.DataFrame, slo: SLOConfig | None) -> list[Recommendation]:
    """One recommendation per (dataset, bucket) of ``metrics`` (as from `summarize`).

    Args:
        metrics: per-shard metrics with meets_slo/cost columns.
        slo: the `SLOConfig` the metrics were judged against (used for the sentence's numbers).

    Returns:
        Recommendations ordered by dataset, then bucket size.
    """
    out: list[Recommendation] = []
    if metrics.is_empty():
        return out
    groups = metrics.select("dataset", "bucket", "bucket_min", "bucket_max").unique().sort(
        ["dataset", "bucket_min", "bucket"], nulls_last=True)
    by_goodput = bool(getattr(slo, "per_request", False))
    min_accuracy = getattr(slo, "min_accuracy", None)
    for g in groups.iter_rows(named=True):
        part = metrics.filter((pl.col("dataset") == g["dataset"]) & (pl.col("bucket") == g["bucket"]))
        rows = part.to_dicts()
        measured = [r for r in rows if r.get("status", "ok") in ("ok", None)]
        failed = [f"{r['experiment']} {r.get('concurrency')}" for r in rows if r not in measured]
        excluded = [f"{r['experiment']} {r.get('concurrency')}" for r in measured if r.get("valid") is False]
        overloaded = [f"{r['experiment']} {r.get('request_rate')}" for r in measured
                      if r.get("valid") is not False and r.get("overloaded")]
        valid = [r for r in rows if r.get("valid") is not False and not r.get("overloaded")
                 and (r.get("successes") or 0) > 0]
        passing = [r for r in valid if r.get("meets_slo")]
        worse: list[dict[str, Any]] = []
        if min_accuracy is not None:
            worse = [r for r in passing if (a := _num(r.get("accuracy"))) is None or a < min_accuracy]
            passing = [r for r in passing if r not in worse]
        # No configuration served a single request within the per-request SLOs: goodput ties at zero
        # and decides nothing, so they are ranked as without per-request SLOs, and the sentence says so.
        no_goodput = by_goodput and bool(passing) and all(not _num(r.get("goodput_per_s")) for r in passing)
        ranked_by_goodput = by_goodput and not no_goodput
        col = "cost_per_10k_good" if ranked_by_goodput else "cost_per_10k_txn"
        priced = [r for r in passing if _num(r.get(col)) is not None]
        cheapest = fastest = closest = None

        def tpm(r: dict[str, Any], ranked_by_goodput: bool = ranked_by_goodput) -> float:
            if ranked_by_goodput:
                return _num(r.get("goodput_per_s")) or 0.0
            return _num(r.get("transactions_per_min")) or 0.0

        def cost(r: dict[str, Any], col: str = col) -> float:
            c = _num(r.get(col))
            return math.inf if c is None else c

        ties: list[dict[str, Any]] = []
        if priced:
            # Costs within TIE of the lowest are one cost at this precision: the most throughput of them.
            low = min(cost(r) for r in priced)
            near = [r for r in priced if cost(r) <= low * (1 + TIE)]
            cheap_row = max(near, key=lambda r: (tpm(r), -cost(r)))
            cheapest = _choice(cheap_row, slo)
            ties = [r for r in near if r is not cheap_row and tpm(r) >= tpm(cheap_row) * (1 - TIE)]
        if passing:
            # Throughputs within TIE of the highest are one throughput: the lowest cost of them.
            top = max(tpm(r) for r in passing)
            fastest = _choice(min([r for r in passing if tpm(r) >= top * (1 - TIE)],
                                  key=lambda r: (cost(r), -tpm(r))), slo)
            status = "meets_slo"
        elif worse:
            closest = _choice(max(worse, key=lambda r: (_accuracy(r), -cost(r))), slo)
            status = "below_accuracy"
        elif valid:
            best = min(valid, key=lambda r: (_choice(r, slo).worst_ratio, -tpm(r), cost(r)))
            closest = _choice(best, slo)
            status = "none_meets_slo"
        else:
            status = "no_data"
        args = {
            "dataset": g["dataset"], "bucket": g["bucket"], "bucket_min": g["bucket_min"], "bucket_max": g["bucket_max"],
            "status": status, "cost_known": bool(priced) or any(_num(r.get("cost_per_10k_txn")) is not None for r in valid),
            "lowest_cost": cheapest, "highest_throughput": fastest, "closest": closest,
            "candidates": len(valid), "excluded_invalid": excluded, "excluded_failed": failed,
            "excluded_overloaded": overloaded,
            "excluded_accuracy": [_choice(r, slo) for r in worse],
        }
        reasoning = _sentence({**args, "by_goodput": ranked_by_goodput, "min_accuracy": min_accuracy})
        if ties and status == "meets_slo":
            reasoning += (f" Within {TIE:.0%} of its cost and throughput, which this measurement does not tell apart: "
                          f"{'; '.join(_choice(r, slo).label for r in ties)}.")
        if no_goodput:
            reasoning += (" No configuration served any request within the per-request SLOs (goodput 0 everywhere), "
                          "so this choice is by cost and throughput per transaction.")
        out.append(Recommendation(reasoning=reasoning, **args))
    return out
