"""Cost metrics: what a configuration costs per transaction, and what the benchmark itself cost.

Instance-priced experiments pay for time: a shard costs ``hourly_usd x instance_count x duration_s /
3600`` and that is spread over its successful transactions (so an idle, under-loaded endpoint is
expensive per transaction). Token-priced experiments (Bedrock on demand) pay per token of successful
requests: ``input_tokens / 1000 x input_price + output_tokens / 1000 x output_price``. What the
benchmark itself cost (`benchmark_cost`) is the bill: endpoint instance-hours from create to delete.

Cost per 1M tokens is given three ways, the same for both pricing models so they compare: the
shard's whole cost divided by its input tokens, by its output tokens, and by both together (all of
successful requests). Each charges the whole bill to that kind of token at the shard's mix, so
for token pricing the output figure includes what the inputs cost, as it would for an instance.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from fmbench.config import BenchmarkConfig
from fmbench.deploy import EndpointTimeline
from fmbench.errors import ConfigError
from fmbench.pricing import NO_PRICING, ResolvedPricing, resolve_pricing


def significant_decimals(value: float, digits: int = 2, most: int | None = 6) -> int:
    """How many decimals show a value's first ``digits`` significant digits (0.0023 needs 4 for two),
    at most ``most`` (None: as many as it takes); 0 for zero and for a value with that many digits left
    of the point. The report's numbers, costs and hours all show small values by this rule."""
    if value == 0:
        return 0
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return decimals if most is None else min(most, decimals)


def usd(amount: float) -> str:
    """A dollar amount as the report writes it: whole dollars from $100, cents from a cent, and below a
    cent two significant digits (never a cost that was not zero shown as $0.0000)."""
    if amount >= 100:
        return f"${amount:,.0f}"
    if amount >= 0.01 or amount <= 0:
        return f"${amount:,.2f}"
    return f"${amount:.{significant_decimals(amount, most=None)}f}"


def hours(value: float) -> str:
    """Hours as the report writes them: three decimals, and below a thousandth two significant digits
    (a short run's 0.00069 instance-hours is not 0.001 beside its $0.00069)."""
    if value >= 0.001 or value <= 0:
        return f"{value:,.3f}"
    return f"{value:.{significant_decimals(value, most=None)}f}"


def experiment_pricing(cfg: BenchmarkConfig | None) -> dict[str, ResolvedPricing]:
    """Resolved pricing of every experiment of a config.

    Raises:
        ConfigError: an experiment's pricing cannot be resolved.
    """
    return {e.name: resolve_pricing(e) for e in getattr(cfg, "experiments", [])}


def _judge_pricing(cfg: BenchmarkConfig | None) -> dict[str, ResolvedPricing]:
    """Resolved pricing of the evaluation's judges, by the name their endpoints go by (judge-<name>)."""
    evaluation = getattr(cfg, "evaluation", None)
    prices = {}
    for judge in evaluation.judges if evaluation is not None else []:
        try:
            prices[judge.experiment_name] = resolve_pricing(judge.as_experiment())
        except ConfigError:  # the report's quality part says the judge is not priced
            prices[judge.experiment_name] = NO_PRICING
    return prices


def _pricing_frame(prices: dict[str, ResolvedPricing]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "experiment": name,
                "price_model": p.model if p.known else None,
                "instance_type": p.instance_type,
                "instance_count": p.instance_count if p.model == "instance" else None,
                "hourly_usd": p.hourly_usd,
                "input_per_1k_usd": p.input_per_1k_usd,
                "output_per_1k_usd": p.output_per_1k_usd,
                "pricing_source": p.source,
            }
            for name, p in prices.items()
        ],
        schema={
            "experiment": pl.String(), "price_model": pl.String(), "instance_type": pl.String(),
            "instance_count": pl.Int64(), "hourly_usd": pl.Float64(), "input_per_1k_usd": pl.Float64(),
            "output_per_1k_usd": pl.Float64(), "pricing_source": pl.String(),
        },
    )


def attach_costs(metrics: pl.DataFrame, cfg: BenchmarkConfig | None) -> pl.DataFrame:
    """Add pricing and cost columns to per-shard metrics (needs duration_s, successes and token sums).

    Adds price_model, instance_type, instance_count, hourly_usd, input_per_1k_usd, output_per_1k_usd,
    pricing_source, shard_cost_usd, cost_per_10k_txn, cost_per_1m_output_tokens, cost_per_1m_input_tokens,
    cost_per_1m_total_tokens and cost_per_10k_good (needs good_requests; null without per-request SLOs).
    Costs are null when the experiment has no pricing or the shard has no successful (good) request.
    """
    prices = _pricing_frame(experiment_pricing(cfg))
    df = metrics.drop([c for c in prices.columns if c != "experiment" and c in metrics.columns])
    df = df.join(prices, on="experiment", how="left")
    instance_cost = pl.col("hourly_usd") * pl.col("duration_s") / 3600.0
    token_cost = (pl.col("input_tokens").fill_null(0) / 1000.0 * pl.col("input_per_1k_usd")
                  + pl.col("output_tokens").fill_null(0) / 1000.0 * pl.col("output_per_1k_usd"))
    df = df.with_columns(
        pl.when(pl.col("price_model") == "instance").then(instance_cost)
        .when(pl.col("price_model") == "token").then(token_cost)
        .otherwise(None).alias("shard_cost_usd"),
        pl.col("pricing_source").fill_null(NO_PRICING.source),
    )
    return _per_token_costs(df.with_columns(
        pl.when(pl.col("successes") > 0).then(pl.col("shard_cost_usd") / pl.col("successes") * 10_000)
        .otherwise(None).alias("cost_per_10k_txn"),
        pl.when(pl.col("output_tokens") > 0).then(pl.col("shard_cost_usd") / pl.col("output_tokens") * 1e6)
        .otherwise(None).alias("cost_per_1m_output_tokens"),
    ))


def _per_token_costs(df: pl.DataFrame) -> pl.DataFrame:
    """Cost per 1M input and per 1M total tokens, and per 10k good requests (goodput per dollar)."""
    cost = pl.col("shard_cost_usd")
    total = pl.col("input_tokens").fill_null(0) + pl.col("output_tokens").fill_null(0)
    good = pl.col("good_requests") if "good_requests" in df.columns else pl.lit(None, dtype=pl.Int64())
    return df.with_columns(
        pl.when(pl.col("input_tokens") > 0).then(cost / pl.col("input_tokens") * 1e6)
        .otherwise(None).alias("cost_per_1m_input_tokens"),
        pl.when(total > 0).then(cost / total * 1e6).otherwise(None).alias("cost_per_1m_total_tokens"),
        pl.when(good > 0).then(cost / good * 10_000).otherwise(None).alias("cost_per_10k_good"),
    )


@dataclass(frozen=True)
class BilledTime:
    """An endpoint's billed wall time (create to delete) split into deploying, measuring and idle."""

    billed_from: _dt.datetime
    billed_to: _dt.datetime
    deleted: bool  # False: still alive at ``billed_to`` (the run's end or now), billed until deleted
    deploying_s: float
    measuring_s: float
    idle_s: float
    in_service: _dt.datetime | None = None  # (clamped to the billed window) when deploying ended
    measuring_from: _dt.datetime | None = None  # the first shard's start, None when nothing was measured
    measuring_to: _dt.datetime | None = None

    @property
    def billed_s(self) -> float:
        """Seconds from create to delete (or to ``billed_to``)."""
        return self.deploying_s + self.measuring_s + self.idle_s


def _when(value: str | _dt.datetime | None) -> _dt.datetime | None:
    if value is None or value == "":
        return None
    when = value if isinstance(value, _dt.datetime) else _dt.datetime.fromisoformat(str(value))
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


def billed_time(timeline: EndpointTimeline, run_end: str | _dt.datetime | None = None) -> BilledTime | None:
    """Split an endpoint's billed time; None when the timeline has no create time (nothing billed by the run).

    An endpoint never deleted is counted up to ``run_end`` (the run's end), else to now.
    """
    created = _when(timeline.created_at)
    if created is None:
        return None
    deleted = _when(timeline.deleted_at)
    end = deleted or _when(run_end) or _dt.datetime.now(_dt.UTC)
    end = max(end, created)

    def clamp(t: _dt.datetime | None, default: _dt.datetime) -> _dt.datetime:
        return min(max(t or default, created), end)

    in_service = clamp(_when(timeline.in_service_at), end)
    first = clamp(_when(timeline.first_shard_at), end)
    last = clamp(_when(timeline.last_shard_at), end)
    billed = (end - created).total_seconds()
    deploying = (in_service - created).total_seconds()
    # Shards only run once the endpoint is InService; a measuring window reaching earlier is clock skew.
    first = max(first, in_service)
    measuring = max(0.0, (last - first).total_seconds()) if timeline.first_shard_at else 0.0
    idle = max(0.0, billed - deploying - measuring)
    return BilledTime(created, end, deleted is not None, deploying, measuring, idle, in_service,
                      first if measuring > 0 else None, last if measuring > 0 else None)


def _instance_rate(p: ResolvedPricing, timeline: EndpointTimeline) -> tuple[float | None, str]:
    """Hourly price of ONE instance of the endpoint, and where it came from."""
    if p.model == "instance" and p.hourly_usd is not None:
        per = p.hourly_usd_per_instance
        return (per if per is not None else p.hourly_usd / max(1, p.instance_count)), p.source
    if p.model == "none" and timeline.instance_type:
        # JumpStart's default instance type is only known once deployed: price it from the table.
        from fmbench.pricing import instance_price

        try:
            entry = instance_price(timeline.instance_type, timeline.region)
        except ConfigError:
            return None, "no pricing configured"
        return entry.hourly_usd, f"{entry.instance_type}: {entry.disclaimer} ({entry.source})"
    return None, p.source


def _lifetime_bill(billed: BilledTime, count: int, rate: float) -> dict[str, float]:
    """An endpoint's instance-hours and dollars, in total and per phase: the columns of a cost row."""
    bill: dict[str, float] = {}
    for phase, seconds in (("instance", billed.billed_s), ("deploying", billed.deploying_s),
                           ("measuring", billed.measuring_s), ("idle", billed.idle_s)):
        bill[f"{phase}_hours"] = count * seconds / 3600.0
        bill["cost_usd" if phase == "instance" else f"{phase}_cost_usd"] = count * seconds / 3600.0 * rate
    return bill


def _add_earlier_life(row: dict[str, Any], life: EndpointTimeline, p: ResolvedPricing,
                      run_end: str | _dt.datetime | None) -> str:
    """Add the bill of an endpoint an earlier attempt of the run made and deleted to a cost row;
    returns what the row's basis says of it."""
    billed = billed_time(life, run_end)
    rate, _ = _instance_rate(p, life)
    what = f"{max(1, life.instance_count)} x {life.instance_type}" if life.instance_type else "an endpoint"
    if billed is None or rate is None:
        return f"; an earlier attempt's endpoint ({what}) is not included: its price or its creation is unknown"
    count = max(1, life.instance_count)
    bill = _lifetime_bill(billed, count, rate)
    for column, value in bill.items():
        row[column] += value
    row["billed_from"] = min(row["billed_from"], billed.billed_from.isoformat())
    gone_by = _when(life.gone_by)
    if gone_by is not None:  # ended at an unknown time: the known part, and at most how much more
        more_h = count * max(0.0, (gone_by - billed.billed_to).total_seconds()) / 3600.0
        known = (f"{hours(billed.billed_s / 3600.0)} h from {billed.billed_from.isoformat()} to "
                 f"{billed.billed_to.isoformat()}, the last time it was known alive ({usd(bill['cost_usd'])})"
                 if life.in_service_at else
                 "nothing (it never reached InService before the attempt was killed, and may never have been created)")
        return (f"; plus an earlier attempt's endpoint, {what}, gone when the run resumed at {gone_by.isoformat()} "
                f"({life.gone_how} at an unknown time): billed {known}; it may have cost up to "
                f"{hours(more_h)} instance-hours ({usd(more_h * rate)}) more, not included")
    if not billed.deleted:  # its deploy in the resumed run ended before it could adopt (or delete) it
        row["still_billing"] = True
        row["billed_to"] = max(row["billed_to"], billed.billed_to.isoformat())
        return (f"; plus an earlier attempt's endpoint, {what} billed {hours(billed.billed_s / 3600.0)} h from "
                f"{billed.billed_from.isoformat()} ({usd(bill['cost_usd'])}), {_not_deleted(billed, life)}")
    by = f" by {life.deleted_by}" if life.deleted_by else ""
    return (f"; plus an earlier attempt's endpoint, {what} billed {hours(billed.billed_s / 3600.0)} h from "
            f"{billed.billed_from.isoformat()} to {billed.billed_to.isoformat()}, its deletion{by} "
            f"({usd(bill['cost_usd'])})")


def _not_deleted(billed: BilledTime, life: EndpointTimeline) -> str:
    """What a cost basis says of an endpoint that was never deleted, billed up to the run's end (or now)."""
    return (f"NOT deleted: still billing, counted up to {billed.billed_to.isoformat()}"
            + (f" ({life.delete_error})" if life.delete_error else ""))


def _timeline(value: EndpointTimeline | Mapping[str, Any]) -> EndpointTimeline:
    return value if isinstance(value, EndpointTimeline) else EndpointTimeline.model_validate(dict(value))


def benchmark_cost(
    requests: pl.DataFrame | pl.LazyFrame,
    cfg: BenchmarkConfig | None,
    shards: list[dict[str, Any]] | None = None,
    endpoints: Mapping[str, EndpointTimeline | Mapping[str, Any]] | None = None,
    run_end: str | _dt.datetime | None = None,
) -> pl.DataFrame:
    """What running the benchmark cost, per experiment: what the account is billed for the run.

    An instance-priced experiment whose endpoint the run created (a timeline in ``endpoints``, the
    manifest's ``endpoints`` entry: experiment -> `EndpointTimeline`) pays instance_count x the
    hourly price of one instance for every hour from create to delete, split into deploying
    (create -> InService), measuring (first -> last shard) and idle (the rest). An endpoint not
    deleted is counted to ``run_end`` (else now) and flagged as still billing. Without a timeline
    (older runs, endpoints the run did not create) the instance time is the sum of the shard wall
    times (``duration_s`` from the manifest's ``shards``, else the span of the shard's records), a
    lower bound, and the basis says so. Token-priced experiments pay for the tokens of every
    successful request, warm-ups included.

    A judge endpoint the run deployed (a timeline with ``judge`` set) is billed like an
    experiment's, from create to delete, in a row named ``judge <name> (evaluation)``; a judge
    without such a bill (token-priced, not deployed by the run, unpriced) has no row here: its
    calls carry their cost (`fmbench.quality`).

    Returns:
        Columns experiment, price_model, instance_hours (billed instance-hours), deploying_hours,
        measuring_hours, idle_hours (instance-hours; null without a timeline), requests,
        input_tokens, output_tokens, cost_usd, deploying_cost_usd, measuring_cost_usd,
        idle_cost_usd (null when unknown), billed_from, billed_to (ISO UTC), still_billing, basis.
    """
    lf = requests.lazy() if isinstance(requests, pl.DataFrame) else requests
    ok = pl.col("ok").fill_null(False)
    per_shard = (
        lf.group_by(["experiment", "shard_id"])
        .agg(
            pl.len().cast(pl.Int64).alias("requests"),
            pl.col("input_tokens").filter(ok).sum().cast(pl.Int64).alias("input_tokens"),
            pl.col("output_tokens").filter(ok).sum().cast(pl.Int64).alias("output_tokens"),
            (pl.coalesce("t_end", "t_start").max() - pl.coalesce("t_scheduled", "t_start").min()).alias("span_s"),
        )
        .collect()
    )
    wall = {s.get("shard_id"): s.get("duration_s") for s in shards or [] if s.get("duration_s") is not None}
    timelines = {name: _timeline(t) for name, t in (endpoints or {}).items()}
    rows = []
    prices = experiment_pricing(cfg)
    judge_prices = _judge_pricing(cfg)
    names = list(dict.fromkeys([*prices, *per_shard["experiment"].to_list(), *timelines]))
    for name in names:
        part = per_shard.filter(pl.col("experiment") == name)
        seconds = 0.0
        for sid, span in zip(part["shard_id"].to_list(), part["span_s"].to_list()):
            measured = wall.get(sid)
            seconds += float(measured) if measured is not None else float(span or 0.0)
        in_tok = int(part["input_tokens"].fill_null(0).sum())
        out_tok = int(part["output_tokens"].fill_null(0).sum())
        timeline = timelines.get(name)
        nothing_new = timeline is not None and timeline.never_created and bool(timeline.earlier)
        if timeline is not None and nothing_new:  # the bill is the earlier attempts' endpoints'
            timeline = EndpointTimeline.from_lives(timeline.earlier)
        p = prices[name] if name in prices else judge_prices.get(name, NO_PRICING)
        row: dict[str, Any] = {
            "experiment": timeline.label if timeline is not None else name,
            "price_model": p.model if p.known else None, "instance_hours": None,
            "deploying_hours": None, "measuring_hours": None, "idle_hours": None,
            "requests": int(part["requests"].sum()), "input_tokens": in_tok, "output_tokens": out_tok,
            "cost_usd": None, "deploying_cost_usd": None, "measuring_cost_usd": None, "idle_cost_usd": None,
            "billed_from": None, "billed_to": None, "still_billing": None, "basis": "no pricing configured",
        }
        billed = billed_time(timeline, run_end) if timeline is not None and p.model != "token" else None
        rate, source = _instance_rate(p, timeline) if timeline is not None and billed else (None, "")
        if timeline is not None and billed is not None and rate is not None:
            count = max(1, timeline.instance_count)
            bill = _lifetime_bill(billed, count, rate)
            row.update({
                "price_model": "instance", **bill,
                "billed_from": billed.billed_from.isoformat(), "billed_to": billed.billed_to.isoformat(),
                "still_billing": not billed.deleted,
            })
            what = f"{count} x {timeline.instance_type}" if timeline.instance_type else f"{count} instance(s)"
            basis = (f"{what} billed {hours(billed.billed_s / 3600.0)} h from create to delete = "
                     f"{hours(bill['instance_hours'])} instance-hours x ${rate:,.4g}/h per instance (deploying "
                     f"{hours(bill['deploying_hours'])}, measuring {hours(bill['measuring_hours'])}, idle "
                     f"{hours(bill['idle_hours'])} instance-hours)")
            for life in timeline.earlier:  # endpoints of earlier attempts (deleted, or one still billing)
                basis += _add_earlier_life(row, life, p, run_end)
            if nothing_new:
                basis = f"an earlier attempt's endpoint: {basis}; the last attempt's deploy created no endpoint"
            if timeline.adopted:
                basis += "; created by an interrupted attempt of this run and adopted"
            gone_by = _when(timeline.gone_by)
            if billed.deleted and gone_by is not None:  # (the experiment was not deployed again)
                more_h = count * max(0.0, (gone_by - billed.billed_to).total_seconds()) / 3600.0
                basis += (f"; {timeline.gone_how} at an unknown time between {billed.billed_to.isoformat()}, the last "
                          f"time it was known alive, and {gone_by.isoformat()}, when the run resumed: it may have cost "
                          f"up to {hours(more_h)} instance-hours ({usd(more_h * rate)}) more, not included")
            elif billed.deleted and timeline.deleted_by:
                basis += f"; not deleted by the run: deleted by {timeline.deleted_by} at {billed.billed_to.isoformat()}"
            if not billed.deleted:
                basis += f"; {_not_deleted(billed, timeline)}"
            row["basis"] = basis if source == p.source else f"{basis}; price: {source}"
            if timeline.judge:
                row["basis"] += "; the judge's endpoint, deployed for the evaluation (its calls are not billed again)"
        elif timeline is not None and timeline.judge:
            continue  # no bill of its own: its calls carry its cost
        elif timeline is not None and timeline.never_created:
            row.update({"instance_hours": 0.0, "cost_usd": 0.0,
                        "basis": "no endpoint billed: its deploy ended before CreateEndpoint and left nothing"})
        elif p.model == "instance" and p.hourly_usd is not None:
            why = ("the run did not create this endpoint" if timeline is not None
                   else "no endpoint timeline in the manifest: an older run, or an endpoint the run did not create")
            row.update({
                "instance_hours": p.instance_count * seconds / 3600.0, "cost_usd": p.hourly_usd * seconds / 3600.0,
                "basis": (f"{hours(p.instance_count * seconds / 3600.0)} instance-hours x "
                          f"${p.hourly_usd / max(1, p.instance_count):,.4g}/h per instance: measured shard time "
                          f"only ({why}), so deployment and idle time are not included"),
            })
        elif p.model == "token" and p.input_per_1k_usd is not None and p.output_per_1k_usd is not None:
            row.update({
                "cost_usd": in_tok / 1000.0 * p.input_per_1k_usd + out_tok / 1000.0 * p.output_per_1k_usd,
                "basis": f"{in_tok:,} input + {out_tok:,} output tokens (warm-ups included)",
            })
        rows.append(row)
    return pl.DataFrame(rows, schema=_BENCH_COST_SCHEMA)


_BENCH_COST_SCHEMA = {
    "experiment": pl.String(), "price_model": pl.String(), "instance_hours": pl.Float64(),
    "deploying_hours": pl.Float64(), "measuring_hours": pl.Float64(), "idle_hours": pl.Float64(),
    "requests": pl.Int64(), "input_tokens": pl.Int64(), "output_tokens": pl.Int64(),
    "cost_usd": pl.Float64(), "deploying_cost_usd": pl.Float64(), "measuring_cost_usd": pl.Float64(),
    "idle_cost_usd": pl.Float64(), "billed_from": pl.String(), "billed_to": pl.String(),
    "still_billing": pl.Boolean(), "basis": pl.String(),
}
