"""Per-request records -> one row of metrics per shard (polars, lazy), with cost and SLO verdicts.

Definitions (the report's glossary repeats them):

* Warm-up rows are dropped first; every other row is a *measured* request, failed or not.
* With in-shard retries (``request_retries``) a request has one record per attempt; only its
  final attempt (highest ``attempt``) counts as the request, so ``requests``, ``errors`` and
  percentiles are over final outcomes, and ``attempts`` counts every measured attempt.
* ``requests`` counts measured requests, ``errors`` the failed ones, ``error_rate = errors / requests``.
* ``resends`` counts sends the client repeated on a new connection because the server had closed
  the pooled one before reading the request (keep-alive limits, proxies): a client event, never an
  error; the request's timing starts at the send that was answered.
* ``cached_prompt_share``: of the prompt tokens of the successful measured requests whose server said
  how many it served from its prompt cache (OpenAI's ``usage.prompt_tokens_details.cached_tokens``,
  llama.cpp's ``timings.cache_n``), the share it did; no prefill ran for them, so where it is high, TTFT
  is that of cached prompts, not new ones. Null when the server never said.
* ``cut_answers`` counts successful measured requests whose answer the server ended for its own
  length limit before ``max_tokens`` (``finish_reason: length`` with fewer output tokens: the prompt and
  max_tokens exceed its context); their throughput is that of shorter answers than asked for.
* ``unstreamed_answers`` counts successful measured requests asked to stream whose answer arrived whole
  (a server or proxy that ignores ``stream``): their TTFT is the whole answer's time.
* ``duration_s`` runs from the first measured request's start (its scheduled time, else ``t_start``)
  to the last measured request's end.
* ``transactions_per_min`` counts successful requests; token rates count tokens of successful requests.
  Tokens the server does not report are counted with the experiment's tokenizer (``tokenizer``: its
  own, else the run's), which also bucketed its prompts.
* Percentiles (p50/p90/p95/p99) are taken over ALL successful measured requests of the shard, with
  linear interpolation between closest ranks: for sorted values ``x[0..n-1]`` and quantile ``q``,
  ``h = (n - 1) * q`` and ``p = x[floor h] + (h - floor h) * (x[ceil h] - x[floor h])`` (numpy's
  default "linear" method, Hyndman & Fan type 7).
* Inter-token latency (``itl_*``) pools every gap between consecutive streamed chunks that carried
  output tokens, over all successful measured requests of the shard (vLLM bench's definition), then
  takes the same percentiles and the max. A chunk that carries several tokens is ONE gap, not split
  per token; ``tokens_per_chunk`` (output tokens after the first / gaps) says how many tokens a gap
  spanned on average, so a value of 4 means each ITL covers about four tokens. Non-streamed requests
  have no chunks and add no gaps; a one-token answer has one chunk and no gap.
* Goodput (DistServe's definition, vLLM bench ``--goodput``): a request is *good* when it succeeded
  and met every per-request SLO that is set (``slo.ttft_s``, ``slo.tpot_s``, ``slo.latency_s``).
  ``goodput_per_s`` = good requests / ``duration_s``, ``goodput_share`` = good / ``requests`` (failed
  requests count in the denominator). A non-streamed answer's TTFT is its whole latency (the engine
  records it so), and it has no TPOT, so it fails a TPOT limit; a one-token streamed answer has no
  decode step and meets a TPOT limit. A metric not recorded fails its limit. Null when no
  per-request SLO is set.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from fmbench.config import BenchmarkConfig, SLOConfig
from fmbench.endpoints._chat import ANSWERED_WHOLE, CUT_BY_SERVER
from fmbench.metrics.cost import attach_costs
from fmbench.metrics.slo import evaluate_slo
from fmbench.records import final_attempts

#: The quantiles every latency metric is summarised at.
PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)

#: Columns that identify a shard in results.
SHARD_KEYS: list[str] = ["experiment", "dataset", "bucket", "bucket_min", "bucket_max", "concurrency",
                         "request_rate"]

_NEEDED = ["experiment", "dataset", "bucket", "bucket_min", "bucket_max", "concurrency", "request_rate",
           "shard_id", "warmup", "ok", "error_kind", "error", "input_tokens", "output_tokens", "t_scheduled",
           "t_start", "t_end", "ttft_s", "latency_s", "tpot_s"]


#: Read when present (older or narrowed record sets may lack them; their metrics are then null).
_OPTIONAL = {"itl_s": pl.List(pl.Float64()), "chunks": pl.Int64(), "resends": pl.Int64(),
             "cached_tokens": pl.Int64(), "note": pl.Utf8()}


def _measured(requests: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    lf = requests.lazy() if isinstance(requests, pl.DataFrame) else requests
    names = lf.collect_schema().names()
    lf = lf.with_columns([pl.lit(None, dtype=t).alias(c) for c, t in _OPTIONAL.items() if c not in names])
    needed = [*_NEEDED, *_OPTIONAL]
    measured = ~pl.col("warmup").fill_null(False)
    if "attempt" not in names or "request_id" not in names:
        return lf.select(needed).filter(measured).with_columns(_attempts=pl.lit(1))
    every = (lf.select([*needed, "request_id", "attempt"]).filter(measured)
             .with_columns(_attempts=pl.len().over(["shard_id", "request_id"])))
    return final_attempts(every).drop("request_id", "attempt")


def _percentile_aggs(column: str, stem: str, ok: pl.Expr) -> list[pl.Expr]:
    values = pl.col(column).filter(ok & pl.col(column).is_not_null())
    return [values.quantile(p / 100, interpolation="linear").alias(f"{stem}_p{p}_s") for p in PERCENTILES]


def _per_request_slo(slo: SLOConfig | None) -> dict[str, float]:
    """The per-request limits that are set (column -> limit)."""
    pairs = (("ttft_s", "ttft_s"), ("tpot_s", "tpot_s"), ("latency_s", "latency_s"))
    return {col: float(v) for col, attr in pairs if (v := getattr(slo, attr, None)) is not None}


def _good(limits: dict[str, float]) -> pl.Expr:
    """True for a successful request that met every per-request limit (see the module docstring)."""
    good = pl.col("ok").fill_null(False)
    for column, limit in limits.items():
        met = pl.col(column) <= limit
        if column == "tpot_s":
            # One streamed token has no decode step: nothing to be slow at (as in vLLM bench). Streamed:
            # it came in a chunk (a non-streamed answer has a TTFT too, its whole latency, and no chunk).
            met = met | ((pl.col("output_tokens") == 1) & (pl.col("chunks").fill_null(0) > 0)
                         & pl.col("tpot_s").is_null())
        good = good & met.fill_null(False)
    return good


def good_request(slo: SLOConfig | Any) -> pl.Expr | None:
    """Per request: True when it succeeded and met every per-request SLO; None when none is set."""
    limits = _per_request_slo(slo)
    return _good(limits) if limits else None


def _aggregate(lf: pl.LazyFrame, slo: SLOConfig | None = None) -> pl.DataFrame:
    ok = pl.col("ok").fill_null(False)
    limits = _per_request_slo(slo)
    good = _good(limits).sum().cast(pl.Int64) if limits else pl.lit(None, dtype=pl.Int64())
    start = pl.coalesce("t_scheduled", "t_start")
    aggs = [
        pl.len().cast(pl.Int64).alias("requests"),
        (~ok).sum().cast(pl.Int64).alias("errors"),
        ok.sum().cast(pl.Int64).alias("successes"),
        start.min().alias("_t0"),
        pl.coalesce("t_end", "t_start").max().alias("_t1"),
        pl.col("input_tokens").filter(ok).sum().cast(pl.Int64).alias("input_tokens"),
        pl.col("output_tokens").filter(ok).sum().cast(pl.Int64).alias("output_tokens"),
        *_percentile_aggs("latency_s", "latency", ok),
        *_percentile_aggs("ttft_s", "ttft", ok),
        *_percentile_aggs("tpot_s", "tpot", ok),
        pl.col("latency_s").filter(ok).mean().alias("latency_mean_s"),
        pl.col("ttft_s").filter(ok).mean().alias("ttft_mean_s"),
        pl.col("input_tokens").mean().alias("prompt_tokens_mean"),
        pl.col("output_tokens").filter(ok).mean().alias("output_tokens_mean"),
        pl.col("shard_id").drop_nulls().first().alias("shard_id"),
        pl.col("_attempts").sum().cast(pl.Int64).alias("attempts"),
        pl.col("resends").fill_null(0).sum().cast(pl.Int64).alias("resends"),
        *_cache_aggs(ok),
        (ok & pl.col("note").str.starts_with(CUT_BY_SERVER).fill_null(False)).sum().cast(pl.Int64)
        .alias("cut_answers"),
        (ok & (pl.col("note") == ANSWERED_WHOLE).fill_null(False)).sum().cast(pl.Int64).alias("unstreamed_answers"),
        good.alias("good_requests"),
        *_chunk_aggs(ok),
    ]
    agg, itl = pl.collect_all([lf.group_by(SHARD_KEYS).agg(aggs), _itl_aggregate(lf)])
    return agg.join(itl, on="shard_id", how="left")


def _cache_aggs(ok: pl.Expr) -> list[pl.Expr]:
    """``cached_prompt_tokens``: prompt tokens the server served from its prompt cache, over the successful
    requests it said so for; ``cached_prompt_share``: those over the same requests' prompt tokens. Null
    when the server never said (most servers do not)."""
    told = ok & pl.col("cached_tokens").is_not_null() & pl.col("input_tokens").is_not_null()
    cached = pl.col("cached_tokens").filter(told).sum()
    prompt = pl.col("input_tokens").filter(told).sum()
    return [
        pl.when(told.any()).then(cached).otherwise(None).cast(pl.Int64).alias("cached_prompt_tokens"),
        pl.when(told.any() & (prompt > 0)).then(cached / prompt).otherwise(None).alias("cached_prompt_share"),
    ]


def _chunk_aggs(ok: pl.Expr) -> list[pl.Expr]:
    streamed = ok & (pl.col("chunks").fill_null(0) > 1) & pl.col("output_tokens").is_not_null()
    gaps = (pl.col("chunks") - 1).filter(streamed).sum()
    later_tokens = (pl.col("output_tokens") - 1).filter(streamed).sum()
    return [pl.when(gaps > 0).then(later_tokens / gaps).otherwise(None).alias("tokens_per_chunk")]


def _itl_aggregate(lf: pl.LazyFrame) -> pl.LazyFrame:
    """ITL percentiles per shard, pooled over every gap of every successful request."""
    # Flattened inside each shard's group (never repeating a key per gap) and sorted once for all
    # the quantiles: a whole summary of 1M requests x 64 gaps took ~21 s and 2.3 GB peak on 2 busy
    # cores, against 32 s and 4.9 GB when the frame was exploded first (tests/metrics/perf_check.py).
    streamed = lf.filter(pl.col("ok").fill_null(False) & pl.col("shard_id").is_not_null()
                         & (pl.col("itl_s").list.len().fill_null(0) > 0))
    itl = pl.col("itl_s").explode().drop_nulls().sort()
    return streamed.select("shard_id", "itl_s").group_by("shard_id").agg(
        *[itl.quantile(p / 100, interpolation="linear").alias(f"itl_p{p}_s") for p in PERCENTILES],
        itl.max().alias("itl_max_s"),
        itl.mean().alias("itl_mean_s"),
        itl.len().cast(pl.Int64).alias("itl_gaps"),
    )


def _parse_bucket(label: str) -> tuple[int | None, int | None]:
    try:
        lo, hi = label.split("-", 1)
        return int(lo), int(hi)
    except (ValueError, AttributeError):
        return None, None


def _shard_key(row: dict[str, Any]) -> tuple[Any, ...]:
    rate = row.get("request_rate")
    return (row.get("experiment"), row.get("dataset"), row.get("bucket"), row.get("concurrency"),
            None if rate is None else float(rate))


def _merge_shards(agg: pl.DataFrame, shards: list[dict[str, Any]] | None) -> pl.DataFrame:
    """Attach manifest shard outcomes; shards that produced no records become rows of their own."""
    info_cols = {
        "status": pl.String(), "shard_error": pl.String(), "valid": pl.Boolean(),
        "invalid_reason": pl.String(), "overloaded": pl.Boolean(), "overload_reason": pl.String(),
        "completion_rate": pl.Float64(), "client_cpu_s": pl.Float64(), "shard_wall_s": pl.Float64(),
    }
    rows = agg.to_dicts()
    by_id = {s.get("shard_id"): s for s in shards or [] if s.get("shard_id")}
    by_key = {_shard_key(s): s for s in shards or []}
    used: set[int] = set()
    for row in rows:
        s = by_id.get(row.get("shard_id")) or by_key.get(_shard_key(row))
        if s is not None:
            used.add(id(s))
        _fill_info(row, s)
    for s in shards or []:
        if id(s) in used:
            continue
        lo, hi = _parse_bucket(str(s.get("bucket", "")))
        row = {k: None for k in agg.columns}
        row.update(
            experiment=s.get("experiment"), dataset=s.get("dataset"), bucket=s.get("bucket"),
            bucket_min=lo, bucket_max=hi, concurrency=s.get("concurrency"),
            request_rate=None if s.get("request_rate") is None else float(s["request_rate"]),
            requests=0, errors=0, successes=0, shard_id=s.get("shard_id"),
        )
        _fill_info(row, s)
        rows.append(row)
    schema = {**agg.schema, **info_cols}
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def _fill_info(row: dict[str, Any], s: dict[str, Any] | None) -> None:
    s = s or {}
    row["status"] = s.get("status", "ok")
    row["shard_error"] = s.get("error")
    row["valid"] = bool(s.get("valid", True))
    row["invalid_reason"] = s.get("invalid_reason")
    row["overloaded"] = bool(s.get("overloaded", False))
    row["overload_reason"] = s.get("overload_reason")
    row["completion_rate"] = s.get("completion_rate")
    row["client_cpu_s"] = s.get("client_cpu_s")
    row["shard_wall_s"] = s.get("duration_s")


def summarize(
    requests: pl.DataFrame | pl.LazyFrame,
    cfg: BenchmarkConfig | None,
    shards: list[dict[str, Any]] | None = None,
) -> pl.DataFrame:
    """Summarise per-request records into one row per shard.

    Args:
        requests: records with `fmbench.records.REQUEST_SCHEMA` columns (eager or lazy; only the
            needed columns are read).
        cfg: the run's config (experiments' pricing and the SLOs); None: no pricing, and only an
            error-free shard meets SLOs.
        shards: the manifest's shard outcomes; adds status/error/valid columns, and a row for each
            shard that produced no records.

    Returns:
        One row per (experiment, dataset, bucket, concurrency, request_rate), sorted by those keys;
        columns are listed in `METRIC_COLUMNS`.

    Raises:
        ConfigError: an experiment's pricing cannot be resolved (e.g. unknown instance type).
    """
    slo = getattr(cfg, "slo", None)
    agg = _aggregate(_measured(requests), slo)
    df = _merge_shards(agg, shards)
    duration = pl.col("_t1") - pl.col("_t0")
    per_s = pl.when(duration > 0).then(1.0 / duration).otherwise(None)
    df = df.with_columns(
        pl.when(pl.col("_t0").is_not_null()).then(duration).otherwise(None).alias("duration_s"),
        pl.when(pl.col("requests") > 0).then(pl.col("errors") / pl.col("requests")).otherwise(None)
        .alias("error_rate"),
        (pl.col("requests") * per_s).alias("requests_per_s"),
        (pl.col("successes") * per_s * 60.0).alias("transactions_per_min"),
        (pl.col("input_tokens") * per_s).alias("input_tokens_per_s"),
        (pl.col("output_tokens") * per_s).alias("output_tokens_per_s"),
        (pl.col("good_requests") * per_s).alias("goodput_per_s"),
        pl.when(pl.col("requests") > 0).then(pl.col("good_requests") / pl.col("requests")).otherwise(None)
        .alias("goodput_share"),
    ).drop("_t0", "_t1")
    df = attach_costs(_attach_tokenizers(df, cfg), cfg)
    df = evaluate_slo(df, slo)
    df = df.sort(["experiment", "dataset", "bucket_min", "bucket", "concurrency", "request_rate"],
                 nulls_last=True)
    return df.select([c for c in METRIC_COLUMNS if c in df.columns])


def _attach_tokenizers(df: pl.DataFrame, cfg: BenchmarkConfig | None) -> pl.DataFrame:
    """Add ``tokenizer``: what counted each experiment's prompt (bucket) and unreported output tokens."""
    specs = {e.name: cfg.tokenizer_for(e) for e in cfg.experiments} if cfg is not None else {}
    return df.with_columns(pl.col("experiment").replace_strict(specs, default=None, return_dtype=pl.String())
                           .alias("tokenizer"))


#: The columns of `summarize`'s result, in order.
METRIC_COLUMNS: list[str] = [
    *SHARD_KEYS, "shard_id", "status", "valid", "invalid_reason", "overloaded", "overload_reason", "completion_rate",
    "shard_error",
    "requests", "successes", "errors", "error_rate", "duration_s", "requests_per_s", "transactions_per_min",
    "input_tokens_per_s", "output_tokens_per_s", "input_tokens", "output_tokens",
    *[f"latency_p{p}_s" for p in PERCENTILES], "latency_mean_s",
    *[f"ttft_p{p}_s" for p in PERCENTILES], "ttft_mean_s",
    *[f"tpot_p{p}_s" for p in PERCENTILES],
    *[f"itl_p{p}_s" for p in PERCENTILES], "itl_max_s", "itl_mean_s", "itl_gaps", "tokens_per_chunk",
    "good_requests", "goodput_per_s", "goodput_share",
    "prompt_tokens_mean", "output_tokens_mean", "tokenizer",
    "price_model", "instance_type", "instance_count", "hourly_usd", "input_per_1k_usd", "output_per_1k_usd",
    "pricing_source", "shard_cost_usd", "cost_per_10k_txn", "cost_per_1m_output_tokens",
    "cost_per_1m_input_tokens", "cost_per_1m_total_tokens", "cost_per_10k_good",
    "meets_slo", "slo_failures", "slo_worst_ratio", "client_cpu_s", "shard_wall_s", "attempts",
    "resends", "cached_prompt_tokens", "cached_prompt_share", "cut_answers", "unstreamed_answers",
]


def error_counts(requests: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Failed measured requests counted by error kind per shard, with one example message.

    ``count`` counts requests whose final outcome is that error; ``retried`` counts failed attempts
    of that kind that were retried (``request_retries``, Bedrock's ``throttle_retries``), whatever
    the request's outcome, so throttling that retries absorbed still shows.

    Returns:
        Columns experiment, dataset, bucket, concurrency, request_rate, error_kind, count, retried,
        example; sorted by shard, then by count descending.
    """
    lf = requests.lazy() if isinstance(requests, pl.DataFrame) else requests
    names = lf.collect_schema().names()
    keys = ["experiment", "dataset", "bucket", "concurrency", "request_rate"]
    cols = [*keys, "warmup", "ok", "error_kind", "error"]
    if "attempt" in names and "request_id" in names:
        attempt = pl.col("attempt").fill_null(1)
        final = attempt == attempt.max().over(["shard_id", "request_id"])
        lf = lf.select([*cols, "shard_id", "request_id", "attempt"]).with_columns(_final=final)
    else:
        lf = lf.select(cols).with_columns(_final=pl.lit(True))
    return (
        lf.filter(~pl.col("warmup").fill_null(False) & ~pl.col("ok").fill_null(False))
        .with_columns(pl.col("error_kind").fill_null("unknown"))
        .group_by([*keys, "error_kind"])
        .agg(pl.col("_final").sum().cast(pl.Int64).alias("count"),
             (~pl.col("_final")).sum().cast(pl.Int64).alias("retried"),
             pl.col("error").drop_nulls().first().alias("example"))
        .sort([*keys, "count", "retried", "error_kind"], descending=[False] * len(keys) + [True, True, False],
              nulls_last=True)
        .collect()
    )


def percentile(values: list[float], q: float) -> float:
    """The linear-interpolation percentile used throughout (``q`` in [0, 1]); for docs and tests."""
    xs = sorted(values)
    if not xs:
        return math.nan
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = math.ceil(h)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])
