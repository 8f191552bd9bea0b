"""Per-shard metrics against hand-computed values on small record sets."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest

from fmbench.errors import ConfigError
from fmbench.metrics import benchmark_cost, error_counts, percentile, summarize
from fmbench.records import RequestRecord, records_frame
from tests.support.records import make_cfg, rec


def one(df: pl.DataFrame, **where: Any) -> dict[str, Any]:
    for k, v in where.items():
        df = df.filter(pl.col(k) == v)
    assert df.height == 1, df
    return df.row(0, named=True)


def test_percentiles_use_linear_interpolation_over_all_successful_requests() -> None:
    lats = [16.0, 1.0, 8.0, 2.0, 4.0]  # unsorted on purpose
    records = [rec(i, 10.0 * i, lat, ttft=lat / 10) for i, lat in enumerate(lats)]
    m = one(summarize(records_frame(records), make_cfg()))
    # sorted 1,2,4,8,16; h = 4q: p50 -> x[2]; p90 -> 8 + .6*8; p95 -> 8 + .8*8; p99 -> 8 + .96*8
    assert m["latency_p50_s"] == pytest.approx(4.0)
    assert m["latency_p90_s"] == pytest.approx(12.8)
    assert m["latency_p95_s"] == pytest.approx(14.4)
    assert m["latency_p99_s"] == pytest.approx(15.68)
    assert m["ttft_p95_s"] == pytest.approx(1.44)
    assert m["latency_mean_s"] == pytest.approx(31.0 / 5)
    assert percentile(lats, 0.95) == pytest.approx(14.4)
    assert percentile([0.1 * k for k in range(1, 11)], 0.9) == pytest.approx(0.91)


def test_percentiles_are_over_the_shard_not_averaged_batches() -> None:
    # Two "batches" with very different spreads: the shard p95 is not the mean of the batch p95s.
    lats = [1.0] * 19 + [21.0] + [2.0] * 20
    records = [rec(i, float(i), lat) for i, lat in enumerate(lats)]
    m = one(summarize(records_frame(records), make_cfg()))
    # sorted: 19 x 1.0, 20 x 2.0, 21.0; n = 40, h = 39 * .95 = 37.05 -> x[37] + .05 * (x[38] - x[37]) = 2.0
    assert m["latency_p95_s"] == pytest.approx(2.0)
    # h = 39 * .99 = 38.61 -> 2.0 + .61 * (21 - 2)
    assert m["latency_p99_s"] == pytest.approx(2.0 + 0.61 * 19.0)


def test_failed_requests_count_in_denominators_not_in_latency() -> None:
    records = [rec(i, float(i), 0.5) for i in range(8)]
    records += [rec(8, 8.0, None, ok=False, kind="throttled"), rec(9, 9.0, None, ok=False, kind="timeout")]
    # the last request ends at 9.0 + 0.2 (failed, no latency): duration = 9.2 - 0.0
    m = one(summarize(records_frame(records), make_cfg()))
    assert (m["requests"], m["successes"], m["errors"]) == (10, 8, 2)
    assert m["error_rate"] == pytest.approx(0.2)
    assert m["duration_s"] == pytest.approx(9.2)
    assert m["requests_per_s"] == pytest.approx(10 / 9.2)
    assert m["transactions_per_min"] == pytest.approx(8 / 9.2 * 60)
    assert m["output_tokens_per_s"] == pytest.approx(8 * 50 / 9.2)
    assert m["input_tokens_per_s"] == pytest.approx(8 * 100 / 9.2)
    assert m["latency_p99_s"] == pytest.approx(0.5)
    assert m["prompt_tokens_mean"] == pytest.approx(100)
    assert m["output_tokens_mean"] == pytest.approx(50)


def test_warmups_are_excluded_from_everything() -> None:
    warm = [rec(i, float(i), 99.0, warmup=True) for i in range(3)]  # early and slow
    measured = [rec(10 + i, 100.0 + i, 1.0) for i in range(4)]
    m = one(summarize(records_frame(warm + measured), make_cfg()))
    assert m["requests"] == 4
    assert m["latency_p99_s"] == pytest.approx(1.0)
    assert m["duration_s"] == pytest.approx(4.0)  # 100.0 -> 103.0 + 1.0


def test_all_failed_shard_does_not_meet_slo() -> None:
    records = [rec(i, float(i), None, ok=False) for i in range(5)]
    cfg = make_cfg({"hourly_usd": 1.0}, {"latency_p95_s": 10.0, "max_error_rate": 1.0})
    m = one(summarize(records_frame(records), cfg))
    assert m["error_rate"] == 1.0
    assert m["latency_p95_s"] is None
    assert m["cost_per_10k_txn"] is None
    assert m["meets_slo"] is False
    assert "p95 latency not measured" in m["slo_failures"]


def test_slo_failures_name_the_objective() -> None:
    records = [rec(i, float(i), 2.0) for i in range(10)] + [rec(10, 10.0, None, ok=False)]
    cfg = make_cfg(slo={"latency_p95_s": 1.0, "ttft_p95_s": 0.5, "max_error_rate": 0.05})
    m = one(summarize(records_frame(records), cfg))
    assert m["meets_slo"] is False
    assert "p95 latency 2.00 s > 1.00 s" in m["slo_failures"]
    assert "error rate 9.1% > 5.0%" in m["slo_failures"]
    assert "TTFT" not in m["slo_failures"]
    ok_cfg = make_cfg(slo={"latency_p95_s": 3.0, "max_error_rate": 0.1})
    assert one(summarize(records_frame(records), ok_cfg))["meets_slo"] is True


def test_instance_cost_is_time_over_successful_transactions() -> None:
    # 10 requests, 8 ok; first start 0.0, last end 99.0 + 1.0 -> 100 s
    records = [rec(i, 11.0 * i, 1.0, ok=i < 8) for i in range(10)]
    cfg = make_cfg({"hourly_usd": 3.6, "instance_count": 2})
    m = one(summarize(records_frame(records), cfg))
    assert m["duration_s"] == pytest.approx(100.0)
    assert m["shard_cost_usd"] == pytest.approx(7.2 * 100 / 3600)  # 0.2
    assert m["cost_per_10k_txn"] == pytest.approx(0.2 / 8 * 10_000)  # 250
    assert m["cost_per_1m_output_tokens"] == pytest.approx(0.2 / 400 * 1e6)  # 500
    assert m["price_model"] == "instance"
    assert m["hourly_usd"] == pytest.approx(7.2)


def test_table_priced_instance_uses_shipped_price() -> None:
    records = [rec(i, float(i), 1.0) for i in range(36)]  # 0.0 -> 36.0
    m = one(summarize(records_frame(records), make_cfg({"instance_type": "ml.g5.xlarge"})))
    assert m["shard_cost_usd"] == pytest.approx(1.408 * 36 / 3600)
    assert "ml.g5.xlarge" in m["pricing_source"] and "verify before purchase" in m["pricing_source"]


def test_token_cost_counts_tokens_of_successful_requests() -> None:
    records = [rec(i, float(i), 1.0, ok=i < 8, inp=100, out=50) for i in range(10)]
    cfg = make_cfg({"input_per_1k_usd": 0.001, "output_per_1k_usd": 0.002})
    m = one(summarize(records_frame(records), cfg))
    assert m["shard_cost_usd"] == pytest.approx(800 / 1000 * 0.001 + 400 / 1000 * 0.002)
    assert m["cost_per_10k_txn"] == pytest.approx(0.0016 / 8 * 10_000)
    assert m["cost_per_1m_output_tokens"] == pytest.approx(0.0016 / 400 * 1e6)


def test_no_pricing_leaves_cost_unknown_not_zero() -> None:
    m = one(summarize(records_frame([rec(0, 0.0, 1.0)]), make_cfg()))
    assert m["cost_per_10k_txn"] is None and m["shard_cost_usd"] is None
    assert m["price_model"] is None


def test_unknown_instance_type_is_a_config_error() -> None:
    cfg = make_cfg({"instance_type": "ml.g5.2xlarg"})
    with pytest.raises(ConfigError, match=r"ml\.g5\.2xlarg.*did you mean ml\.g5\.2xlarge"):
        summarize(records_frame([rec(0, 0.0, 1.0)]), cfg)


def test_one_row_per_shard_and_lazy_input_gives_the_same_result() -> None:
    records = [rec(i, float(i), 0.1 * (i + 1), concurrency=c, experiment=e)
               for e in ("a", "b") for c in (1, 4) for i in range(6)]
    cfg = make_cfg(names=("a", "b"))
    eager = summarize(records_frame(records), cfg)
    lazy = summarize(records_frame(records).lazy(), cfg)
    assert eager.height == 4
    assert eager.select("experiment", "concurrency").rows() == [("a", 1), ("a", 4), ("b", 1), ("b", 4)]
    assert eager.equals(lazy)
    required = {"experiment", "dataset", "bucket", "bucket_min", "bucket_max", "concurrency", "request_rate",
                "requests", "errors", "error_rate", "duration_s", "requests_per_s", "transactions_per_min",
                "input_tokens_per_s", "output_tokens_per_s", "latency_mean_s", "prompt_tokens_mean",
                "output_tokens_mean", "cost_per_10k_txn", "cost_per_1m_output_tokens", "shard_cost_usd",
                "meets_slo", "slo_failures", "valid"}
    required |= {f"{m}_p{p}_s" for m in ("latency", "ttft", "tpot") for p in (50, 90, 95, 99)}
    assert required <= set(eager.columns)


def test_manifest_shards_add_status_and_rows_for_shards_without_records() -> None:
    records = [rec(i, float(i), 0.5, shard_id="s1") for i in range(4)]
    shards = [
        {"shard_id": "s1", "experiment": "exp", "dataset": "d", "bucket": "1-500", "concurrency": 1,
         "request_rate": None, "status": "ok", "error": None, "valid": False,
         "invalid_reason": "client CPU saturated", "duration_s": 5.0, "client_cpu_s": 4.9},
        {"shard_id": "s2", "experiment": "exp", "dataset": "d", "bucket": "1-500", "concurrency": 8,
         "request_rate": None, "status": "failed", "error": "EndpointConnectionError: refused", "valid": True,
         "invalid_reason": None, "duration_s": 0.1, "client_cpu_s": 0.0},
    ]
    m = summarize(records_frame(records), make_cfg(slo={"max_error_rate": 0.5}), shards=shards)
    s1 = one(m, concurrency=1)
    assert s1["valid"] is False and s1["invalid_reason"] == "client CPU saturated"
    assert s1["client_cpu_s"] == pytest.approx(4.9)
    s2 = one(m, concurrency=8)
    assert (s2["status"], s2["requests"], s2["meets_slo"]) == ("failed", 0, False)
    assert s2["shard_error"] == "EndpointConnectionError: refused"
    assert (s2["bucket_min"], s2["bucket_max"]) == (1, 500)


def _two_rate_records() -> list[RequestRecord]:
    """Three requests at each of two open-loop rates, one shard per rate (``r1.0``, ``r2.0``)."""
    records = []
    for rate in (1.0, 2.0):
        for i in range(3):
            r = rec(i, float(i), 0.5, concurrency=0, shard_id=f"r{rate}")
            r.request_rate = rate
            records.append(r)
    return records


def test_open_loop_shards_are_keyed_by_rate() -> None:
    records = _two_rate_records()
    m = summarize(records_frame(records), make_cfg())
    assert m["request_rate"].to_list() == [1.0, 2.0]


def test_an_overloaded_shard_fails_its_slos_and_older_manifests_read_as_not_overloaded() -> None:
    records = _two_rate_records()
    base = {"experiment": "exp", "dataset": "d", "bucket": "1-500", "concurrency": 0, "status": "ok"}
    shards = [{**base, "shard_id": "r1.0", "request_rate": 1.0},  # written before overload was judged
              {**base, "shard_id": "r2.0", "request_rate": 2.0, "overloaded": True, "completion_rate": 0.5,
               "overload_reason": "completed 1 req/s against 2 req/s offered (50%)"}]
    m = summarize(records_frame(records), make_cfg(slo={"max_error_rate": 0.5}), shards=shards)
    old, flooded = one(m, request_rate=1.0), one(m, request_rate=2.0)
    assert (old["overloaded"], old["overload_reason"], old["completion_rate"], old["meets_slo"]) == (
        False, None, None, True)
    assert flooded["overloaded"] and flooded["completion_rate"] == 0.5 and not flooded["meets_slo"]
    assert flooded["overload_reason"] == "completed 1 req/s against 2 req/s offered (50%)"
    assert flooded["slo_failures"] == "endpoint overloaded (completed 50% of the offered rate)"


def test_error_counts_by_kind_per_shard() -> None:
    records = [rec(0, 0.0, 1.0), rec(1, 1.0, None, ok=False, kind="throttled"),
               rec(2, 2.0, None, ok=False, kind="throttled"), rec(3, 3.0, None, ok=False, kind="timeout"),
               rec(4, 4.0, None, ok=False, kind="timeout", warmup=True)]
    e = error_counts(records_frame(records))
    assert e.select("error_kind", "count").rows() == [("throttled", 2), ("timeout", 1)]
    assert e["example"][0].startswith("throttled #")
    assert e["retried"].to_list() == [0, 0]


def test_error_counts_show_retried_attempts_apart_from_final_failures() -> None:
    # request 0: throttled twice, then ok; request 1: throttled, then failed with a timeout
    attempts = [(0, 1, False, "throttled"), (0, 2, False, "throttled"), (0, 3, True, None),
                (1, 1, False, "throttled"), (1, 2, False, "timeout")]
    records = []
    for i, attempt, ok, kind in attempts:
        r = rec(i, float(attempt), 1.0 if ok else None, ok=ok, kind=kind)
        r.attempt = attempt
        records.append(r)
    e = error_counts(records_frame(records))
    assert e.select("error_kind", "count", "retried").rows() == [("timeout", 1, 0), ("throttled", 0, 3)]
    m = summarize(records_frame(records), make_cfg())
    assert (m["requests"][0], m["errors"][0], m["attempts"][0]) == (2, 1, 5)


def test_benchmark_cost_counts_shard_time_and_every_token() -> None:
    records = [rec(i, float(i), 1.0, warmup=i < 2, shard_id="s1") for i in range(10)]
    shards = [{"shard_id": "s1", "duration_s": 1800.0}]
    inst = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 2.0}), shards)
    row = inst.row(0, named=True)
    assert row["instance_hours"] == pytest.approx(0.5)
    assert row["cost_usd"] == pytest.approx(1.0)
    assert row["requests"] == 10
    tok = benchmark_cost(records_frame(records), make_cfg({"input_per_1k_usd": 0.01, "output_per_1k_usd": 0.1}))
    assert tok.row(0, named=True)["cost_usd"] == pytest.approx(10 * 100 / 1000 * 0.01 + 10 * 50 / 1000 * 0.1)
    # without a manifest duration the records' span (warm-ups included) is the instance time
    span = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 3600.0}))
    assert span.row(0, named=True)["cost_usd"] == pytest.approx(10.0)


def test_percentile_helper_handles_edges() -> None:
    assert math.isnan(percentile([], 0.5))
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0], 0.5) == pytest.approx(1.5)


def test_cached_prompt_tokens_count_successful_requests_whose_server_said() -> None:
    told = [rec(i, float(i), 0.5, inp=100) for i in range(4)]
    for r, cached in zip(told, [0, 90, 99, None], strict=True):  # the last server said nothing
        r.cached_tokens = cached
    failed = rec(4, 4.0, None, ok=False)
    failed.cached_tokens = 100  # a failed request's counts are not measurements
    warm = rec(5, 5.0, 0.5, warmup=True)
    warm.cached_tokens = 100
    silent = [rec(i, float(i), 0.5, concurrency=2) for i in range(3)]
    m = summarize(records_frame([*told, failed, warm, *silent]), make_cfg())
    row = one(m, concurrency=1)
    assert row["cached_prompt_tokens"] == 189
    assert row["cached_prompt_share"] == pytest.approx(189 / 300)
    quiet = one(m, concurrency=2)
    assert quiet["cached_prompt_tokens"] is None and quiet["cached_prompt_share"] is None
