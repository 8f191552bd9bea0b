"""Cost metrics: what a configuration costs per transaction, and what the benchmark itself cost.

Instance-priced experiments pay for time: a shard costs ``hourly_usd x instance_count x duration_s /
3600`` and that is spread over its successful transactions (so an idle, under-loaded endpoint is
expensive per transaction). Token-priced experiments (Bedrock on demand) pay per token of successful
requests: ``input_tokens / 1000 x input_price + output_tokens / 1000 x output_price``.

Cost per 1M tokens is given three ways, the same for both pricing models so they compare: the
shard's whole cost divided by its input tokens, by its output tokens, and by both together (all of
successful requests). Each charges the whole bill to that kind of token at the shard's mix, so
for token pricing the output figure includes what the inputs cost, as it would for an instance.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from fmbench.config import BenchmarkConfig
from fmbench.pricing import NO_PRICING, ResolvedPricing, resolve_pricing


def experiment_pricing(cfg: BenchmarkConfig | None) -> dict[str, ResolvedPricing]:
    """Resolved pricing of every experiment of a config.

    Raises:
        ConfigError: an experiment's pricing cannot be resolved.
    """
    return {e.name: resolve_pricing(e) for e in getattr(cfg, "experiments", [])}


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


def benchmark_cost(
    requests: pl.DataFrame | pl.LazyFrame,
    cfg: BenchmarkConfig | None,
    shards: list[dict[str, Any]] | None = None,
) -> pl.DataFrame:
    """What running the benchmark cost, per experiment (warm-ups and failed requests included).

    Instance time is the sum of the experiment's shard wall times from the manifest (``duration_s``)
    where known, else the span of the shard's records including warm-ups; deployment, model loading
    and idle time between shards are NOT included, so this is a lower bound for deployed endpoints.
    Token-priced experiments are charged for the tokens of every successful request, warm-ups included.

    Returns:
        Columns experiment, price_model, instance_hours, requests, input_tokens, output_tokens,
        cost_usd (null when the experiment has no pricing), basis (how it was computed).
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
    rows = []
    prices = experiment_pricing(cfg)
    names = list(dict.fromkeys([*prices, *per_shard["experiment"].to_list()]))
    for name in names:
        part = per_shard.filter(pl.col("experiment") == name)
        seconds = 0.0
        for sid, span in zip(part["shard_id"].to_list(), part["span_s"].to_list()):
            measured = wall.get(sid)
            seconds += float(measured) if measured is not None else float(span or 0.0)
        in_tok = int(part["input_tokens"].fill_null(0).sum())
        out_tok = int(part["output_tokens"].fill_null(0).sum())
        p = prices.get(name, NO_PRICING)
        if p.model == "instance" and p.hourly_usd is not None:
            cost: float | None = p.hourly_usd * seconds / 3600.0
            basis = (f"{seconds / 3600.0:.3f} instance-hours x ${p.hourly_usd:,.4g}/h "
                     "(measured shard time only; deployment and idle time excluded)")
        elif p.model == "token" and p.input_per_1k_usd is not None and p.output_per_1k_usd is not None:
            cost = in_tok / 1000.0 * p.input_per_1k_usd + out_tok / 1000.0 * p.output_per_1k_usd
            basis = f"{in_tok:,} input + {out_tok:,} output tokens (warm-ups included)"
        else:
            cost, basis = None, "no pricing configured"
        rows.append({
            "experiment": name, "price_model": p.model if p.known else None,
            "instance_hours": seconds / 3600.0 if p.model == "instance" else None,
            "requests": int(part["requests"].sum()), "input_tokens": in_tok, "output_tokens": out_tok,
            "cost_usd": cost, "basis": basis,
        })
    return pl.DataFrame(rows, schema={
        "experiment": pl.String(), "price_model": pl.String(), "instance_hours": pl.Float64(),
        "requests": pl.Int64(), "input_tokens": pl.Int64(), "output_tokens": pl.Int64(),
        "cost_usd": pl.Float64(), "basis": pl.String(),
    })
