"""Recommendations: cheapest and fastest configuration within SLOs, checked against hand-computed answers."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest

from fmbench.config import SLOConfig, parse_config
from fmbench.metrics import evaluate_slo, recommend, summarize
from fmbench.records import RequestRecord, records_frame

# (experiment, concurrency, latency_s, gap between starts): 10 requests each, all successful.
# duration = 9 * gap + latency; transactions/min = 10 / duration * 60; cost/10k = hourly * duration / 3600 / 10 * 1e4
SHARDS = [
    ("cheap", 1, 0.5, 0.5),    # 5.0 s   -> 120 tpm,   $1 * 5.0/3600 -> $1.3889 per 10k
    ("cheap", 4, 1.5, 0.125),  # 2.625 s -> 228.6 tpm, $0.7292 per 10k, but p95 1.5 s fails a 1.0 s SLO
    ("fast", 1, 0.3, 0.3),     # 3.0 s   -> 200 tpm,   $4 * 3.0/3600 -> $3.3333 per 10k
    ("fast", 4, 0.4, 0.1),     # 1.3 s   -> 461.5 tpm, $4 * 1.3/3600 -> $1.4444 per 10k
]


def records() -> list[RequestRecord]:
    out = []
    for exp, conc, lat, gap in SHARDS:
        for i in range(10):
            start = 100.0 + i * gap
            out.append(RequestRecord(
                experiment=exp, dataset="d", bucket="500-1000", bucket_min=500, bucket_max=1000,
                concurrency=conc, shard_id=f"{exp}-{conc}", request_id=i, prompt_id=str(i), ok=True,
                input_tokens=700, output_tokens=50, t_scheduled=start, t_start=start, t_end=start + lat,
                ttft_s=0.05, latency_s=lat, tpot_s=(lat - 0.05) / 49,
            ))
    return out


def config(slo: dict[str, Any], priced: bool = True) -> Any:
    prices = {"cheap": {"hourly_usd": 1.0}, "fast": {"hourly_usd": 4.0}}
    return parse_config({
        "name": "t", "buckets": [[500, 1000]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": n, "endpoint": {"provider": "simulated"}, "concurrency_levels": [1, 4],
                         **({"pricing": prices[n]} if priced else {})} for n in ("cheap", "fast")],
        "slo": slo,
    })


def test_lowest_cost_and_highest_throughput_within_slo() -> None:
    cfg = config({"latency_p95_s": 1.0})
    m = summarize(records_frame(records()), cfg)
    [rec] = recommend(m, cfg.slo)
    assert rec.status == "meets_slo"
    assert (rec.lowest_cost.experiment, rec.lowest_cost.concurrency) == ("cheap", 1)
    assert rec.lowest_cost.cost_per_10k_txn == pytest.approx(1.0 * 5.0 / 3600 / 10 * 1e4)
    assert (rec.highest_throughput.experiment, rec.highest_throughput.concurrency) == ("fast", 4)
    assert rec.highest_throughput.transactions_per_min == pytest.approx(10 / 1.3 * 60)
    assert rec.reasoning.startswith(
        "For prompts of 500–1,000 tokens (dataset d), cheap at concurrency 1 meets every SLO "
        "(p95 latency 0.50 s ≤ 1.00 s, error rate 0.0% ≤ 0.0%) at the lowest cost: "
        "$1.39 per 10k transactions, 120 transactions/min.")
    assert "choose fast at concurrency 4: 462 transactions/min at $1.44 per 10k transactions" in rec.reasoning
    assert rec.best is rec.lowest_cost


def test_nothing_meets_slo_names_the_closest() -> None:
    cfg = config({"latency_p95_s": 0.25})
    # worst ratios: cheap/1 2.0, cheap/4 6.0, fast/1 1.2, fast/4 1.6 -> fast at 1 is closest
    [rec] = recommend(summarize(records_frame(records()), cfg), cfg.slo)
    assert rec.status == "none_meets_slo"
    assert rec.lowest_cost is None and rec.highest_throughput is None
    assert (rec.closest.experiment, rec.closest.concurrency) == ("fast", 1)
    assert rec.closest.worst_ratio == pytest.approx(1.2)
    assert "no configuration meets every SLO; the closest is fast at concurrency 1" in rec.reasoning
    assert "p95 latency 300 ms > 250 ms" in rec.reasoning


def test_without_prices_rank_by_throughput_and_say_cost_is_unknown() -> None:
    cfg = config({"latency_p95_s": 1.0}, priced=False)
    [rec] = recommend(summarize(records_frame(records()), cfg), cfg.slo)
    assert rec.cost_known is False and rec.lowest_cost is None
    assert (rec.highest_throughput.experiment, rec.highest_throughput.concurrency) == ("fast", 4)
    assert "cost is unknown" in rec.reasoning


def _metrics(rows: list[dict[str, Any]]) -> pl.DataFrame:
    base = {"dataset": "d", "bucket": "1-500", "bucket_min": 1, "bucket_max": 500, "request_rate": None,
            "requests": 10, "successes": 10, "errors": 0, "error_rate": 0.0, "latency_p95_s": 0.5,
            "ttft_p95_s": None, "tpot_p95_s": None, "valid": True, "status": "ok", "instance_type": None,
            "instance_count": None, "output_tokens_per_s": 1.0}
    return pl.DataFrame([{**base, **r} for r in rows])


def test_cost_ties_go_to_higher_throughput_and_invalid_shards_are_skipped() -> None:
    slo = SLOConfig(latency_p95_s=1.0)
    m = evaluate_slo(_metrics([
        {"experiment": "a", "concurrency": 1, "cost_per_10k_txn": 2.0, "transactions_per_min": 100.0},
        {"experiment": "b", "concurrency": 2, "cost_per_10k_txn": 2.0, "transactions_per_min": 300.0},
        {"experiment": "c", "concurrency": 8, "cost_per_10k_txn": 0.5, "transactions_per_min": 900.0,
         "valid": False},
    ]), slo)
    [rec] = recommend(m, slo)
    assert rec.lowest_cost.experiment == "b"
    assert rec.highest_throughput.experiment == "b"
    assert rec.excluded_invalid == ["c 8"]
    assert "1 invalid shard not considered" in rec.reasoning


def test_a_failed_shard_is_called_failed_not_invalid() -> None:
    # A shard that could not be measured is in the report's failed shards, not its invalid ones.
    slo = SLOConfig(latency_p95_s=1.0)
    m = evaluate_slo(_metrics([
        {"experiment": "a", "concurrency": 1, "cost_per_10k_txn": 2.0, "transactions_per_min": 100.0},
        {"experiment": "f", "concurrency": 2, "requests": 0, "successes": 0, "error_rate": None,
         "latency_p95_s": None, "status": "failed", "valid": False},
    ]), slo)
    [rec] = recommend(m, slo)
    assert rec.excluded_failed == ["f 2"] and rec.excluded_invalid == []
    assert rec.reasoning.endswith("(1 failed shard not considered.)")
    m = evaluate_slo(_metrics([
        {"experiment": "a", "concurrency": 1, "cost_per_10k_txn": 2.0, "transactions_per_min": 100.0},
        {"experiment": "c", "concurrency": 8, "cost_per_10k_txn": 0.5, "transactions_per_min": 900.0, "valid": False},
        {"experiment": "f", "concurrency": 2, "requests": 0, "successes": 0, "error_rate": None,
         "latency_p95_s": None, "status": "failed", "valid": False},
    ]), slo)
    [rec] = recommend(m, slo)
    assert "(1 failed and 1 invalid shards not considered.)" in rec.reasoning


def test_zero_error_tolerance_ranks_failures_by_error_rate() -> None:
    slo = SLOConfig(latency_p95_s=1.0)  # max_error_rate defaults to 0
    m = evaluate_slo(_metrics([
        {"experiment": "a", "concurrency": 1, "cost_per_10k_txn": 1.0, "transactions_per_min": 100.0,
         "error_rate": 0.02, "errors": 2},
        {"experiment": "b", "concurrency": 1, "cost_per_10k_txn": 1.0, "transactions_per_min": 100.0,
         "error_rate": 0.01, "errors": 1},
    ]), slo)
    assert m["slo_worst_ratio"].to_list() == pytest.approx([3.0, 2.0])
    [rec] = recommend(m, slo)
    assert rec.status == "none_meets_slo" and rec.closest.experiment == "b"


def test_bucket_with_only_failed_shards_has_no_data() -> None:
    slo = SLOConfig()
    m = evaluate_slo(_metrics([{"experiment": "a", "concurrency": 1, "requests": 0, "successes": 0,
                                "cost_per_10k_txn": None, "transactions_per_min": None, "status": "failed"}]), slo)
    [rec] = recommend(m, slo)
    assert rec.status == "no_data" and rec.best is None
    assert "nothing can be recommended" in rec.reasoning


def test_slo_descriptions_use_one_unit_per_objective() -> None:
    from fmbench.metrics import slo_checks

    slo = SLOConfig(latency_p95_s=2.0, ttft_p95_s=0.15, tpot_p95_s=0.02, max_error_rate=0.01)
    row = {"latency_p95_s": 1.234, "ttft_p95_s": 0.085, "tpot_p95_s": None, "error_rate": 0.02}
    text = [c.describe() for c in slo_checks(row, slo)]
    assert text == ["p95 latency 1.23 s ≤ 2.00 s", "p95 TTFT 85 ms ≤ 150 ms",
                    "p95 TPOT not measured (limit 20 ms)", "error rate 2.0% > 1.0%"]


def test_costs_and_throughputs_within_one_percent_are_ties_and_the_sentence_names_them() -> None:
    # Two identical configurations 0.07 % apart in cost: the one with more throughput, and the other
    # named as not told apart. For the most throughput, 0.4 % more is no reason to pay $3.32 over $0.
    slo = SLOConfig(latency_p95_s=1.0)
    m = evaluate_slo(_metrics([
        {"experiment": "a", "concurrency": 2, "cost_per_10k_txn": 0.105294, "transactions_per_min": 1583.0},
        {"experiment": "b", "concurrency": 2, "cost_per_10k_txn": 0.105222, "transactions_per_min": 1584.0},
        {"experiment": "c", "concurrency": 2, "cost_per_10k_txn": 0.1052, "transactions_per_min": 900.0},
    ]), slo)
    [rec] = recommend(m, slo)
    assert rec.lowest_cost is not None and rec.lowest_cost.experiment == "b"
    assert "Within 1% of its cost and throughput, which this measurement does not tell apart: a at concurrency 2." \
        in rec.reasoning
    m = evaluate_slo(_metrics([
        {"experiment": "a", "concurrency": 2, "cost_per_10k_txn": 3.32, "transactions_per_min": 1592.0},
        {"experiment": "b", "concurrency": 2, "cost_per_10k_txn": 0.0, "transactions_per_min": 1585.0},
    ]), slo)
    [rec] = recommend(m, slo)
    assert rec.highest_throughput is not None and rec.highest_throughput.experiment == "b"
    assert "For the most throughput" not in rec.reasoning and "Within 1%" not in rec.reasoning


def test_an_slo_verdict_reads_as_it_compares() -> None:
    """A failed 0.133 % error rate against a 0.1 % limit is not "0.1% > 0.1%", nor a 0.04 % one
    against no errors "0.0% > 0.0%", nor a 2.3-ms p95 "0.00 s"."""
    from fmbench.metrics import slo_checks

    slo = SLOConfig(latency_p95_s=2.0, max_error_rate=0.001)
    text = [c.describe() for c in slo_checks({"latency_p95_s": 0.0023, "error_rate": 2 / 1500}, slo)]
    assert text == ["p95 latency 0.002 s ≤ 2.000 s", "error rate 0.13% > 0.10%"]
    [zero] = [c.describe() for c in slo_checks({"error_rate": 0.0004}, SLOConfig(max_error_rate=0.0))]
    assert zero == "error rate 0.04% > 0.00%"
    [same] = [c.describe() for c in slo_checks({"error_rate": 0.001}, slo) if c.label == "error rate"]
    assert same == "error rate 0.1% ≤ 0.1%"  # equal values need no more digits


def test_report_cells_show_small_values_by_their_first_digits() -> None:
    from fmbench.report.tables import fmt_pct, fmt_seconds

    assert [fmt_seconds(x) for x in (0.0, 0.0023, 0.05, 1.234, None)] == ["0.00", "0.0023", "0.05", "1.23", "–"]
    assert [fmt_pct(x) for x in (0.0, 0.0004, 0.00133, 0.5)] == ["0.0%", "0.040%", "0.1%", "50.0%"]


def test_without_slos_the_closest_is_the_one_with_the_fewest_errors() -> None:
    """No SLO given (a report of a run whose config is gone): a shard is judged, as `evaluate_slo`
    judges it, on its errors alone, and the sentence says so."""
    m = evaluate_slo(_metrics([
        {"experiment": "a", "concurrency": 1, "cost_per_10k_txn": 1.0, "transactions_per_min": 100.0,
         "error_rate": 0.05, "errors": 1},
        {"experiment": "a", "concurrency": 8, "cost_per_10k_txn": 0.5, "transactions_per_min": 250.0,
         "error_rate": 0.5, "errors": 5},
    ]), None)
    [rec] = recommend(m, None)
    assert rec.status == "none_meets_slo" and rec.closest is not None and rec.closest.concurrency == 1
    assert rec.closest.worst_ratio == pytest.approx(m["slo_worst_ratio"][0])
    assert "the closest is a at concurrency 1 (error rate 5.0% > 0.0%)" in rec.reasoning, rec.reasoning


@pytest.mark.parametrize(("amount", "shown"), [
    (0.0, "$0.00"), (2.5e-5, "$0.000025"), (0.00012, "$0.00012"), (0.0042, "$0.0042"), (0.01, "$0.01"),
    (0.364, "$0.36"), (12.3, "$12.30"), (1234.5, "$1,234"),
])
def test_a_cost_is_never_shown_as_zero_unless_it_is(amount: float, shown: str) -> None:
    from fmbench.report.tables import fmt_usd

    assert fmt_usd(amount) == shown


def test_an_overloaded_shard_fails_its_slos_and_is_never_recommended_not_even_as_the_closest() -> None:
    """An endpoint whose queue grew for the whole shard fails whatever its percentiles say, and the
    sentence counts it apart from the invalid ones."""
    slo = SLOConfig(latency_p95_s=1.0)
    fast = {"experiment": "a", "concurrency": None, "request_rate": 40.0, "cost_per_10k_txn": 0.5,
            "transactions_per_min": 900.0, "overloaded": True, "completion_rate": 0.62,
            "overload_reason": "completed 24.8 req/s against 40 req/s offered (62%)"}
    slow = {"experiment": "a", "concurrency": None, "request_rate": 10.0, "cost_per_10k_txn": 2.0,
            "transactions_per_min": 600.0, "overloaded": False, "completion_rate": 1.0, "overload_reason": None}
    m = evaluate_slo(_metrics([fast, slow]), slo)
    flooded = m.filter(pl.col("request_rate") == 40.0).row(0, named=True)
    assert flooded["meets_slo"] is False
    assert flooded["slo_failures"] == "endpoint overloaded (completed 62% of the offered rate)"
    assert flooded["slo_worst_ratio"] == pytest.approx(1 / 0.62)
    [rec] = recommend(m, slo)
    assert rec.best is not None and rec.best.request_rate == 10.0
    assert rec.excluded_overloaded == ["a 40.0"] and rec.excluded_invalid == []
    assert rec.reasoning.endswith("(1 overloaded shard not considered.)")
    # Nothing else to choose: still not the closest either.
    [rec] = recommend(evaluate_slo(_metrics([fast]), slo), slo)
    assert rec.status == "no_data" and rec.best is None
    assert rec.reasoning.endswith("no valid shard produced successful measurements at a rate the endpoint kept up "
                                  "with, so nothing can be recommended. (1 overloaded shard not considered.)")
    # Alongside failed and invalid shards, each kind is counted.
    m = evaluate_slo(_metrics([fast, slow, {**slow, "request_rate": 80.0, "valid": False},
                               {**slow, "request_rate": 5.0, "requests": 0, "successes": 0, "status": "failed",
                                "valid": False}]), slo)
    [rec] = recommend(m, slo)
    assert "(1 failed, 1 invalid and 1 overloaded shards not considered.)" in rec.reasoning


def test_a_value_a_rounding_step_below_a_cent_shows_two_digits_like_every_other_number() -> None:
    """Cost, hours and the report's cells share one rule for small values (`significant_decimals`),
    so a cost a float rounding step below a cent is $0.010 like the 0.010 s beside it, not $0.0100."""
    from fmbench.metrics.cost import hours, significant_decimals, usd
    from fmbench.report.tables import fmt_seconds

    below_cent, below_thousandth = math.nextafter(0.01, 0), math.nextafter(0.001, 0)
    assert (usd(below_cent), fmt_seconds(below_cent), hours(below_thousandth)) == ("$0.010", "0.010", "0.0010")
    assert [significant_decimals(v) for v in (0.0, 0.0023, 0.05, 1.5, 123.0, 1e-9)] == [0, 4, 3, 1, 0, 6]
    assert significant_decimals(1e-9, most=None) == 10

