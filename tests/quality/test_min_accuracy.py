"""slo.min_accuracy: a configuration that answers worse is not recommended, and the sentence says so."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from fmbench.config import parse_config
from fmbench.metrics import recommend, summarize
from fmbench.records import RequestRecord, records_frame

# (experiment, concurrency, latency_s, gap between starts): 10 successful requests each.
SHARDS = [("cheap", 1, 0.5, 0.5), ("cheap", 4, 0.6, 0.15), ("good", 1, 0.3, 0.3), ("good", 4, 0.4, 0.1)]


def _metrics(min_accuracy: float | None, accuracy: dict[str, float | None]) -> tuple[pl.DataFrame, Any]:
    recs = []
    for exp, conc, lat, gap in SHARDS:
        for i in range(10):
            start = 100.0 + i * gap
            recs.append(RequestRecord(
                experiment=exp, dataset="d", bucket="500-1000", bucket_min=500, bucket_max=1000, concurrency=conc,
                shard_id=f"{exp}-{conc}", request_id=i, prompt_id=str(i), ok=True, input_tokens=700,
                output_tokens=50, t_scheduled=start, t_start=start, t_end=start + lat, ttft_s=0.05, latency_s=lat,
                tpot_s=(lat - 0.05) / 49))
    cfg = parse_config({
        "name": "t", "buckets": [[500, 1000]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": n, "endpoint": {"provider": "simulated"}, "concurrency_levels": [1, 4],
                         "pricing": {"hourly_usd": price}} for n, price in (("cheap", 1.0), ("good", 8.0))],
        "slo": {"latency_p95_s": 1.0, **({"min_accuracy": min_accuracy} if min_accuracy is not None else {})},
        "evaluation": {},
    })
    m = summarize(records_frame(recs), cfg)
    acc = pl.DataFrame({"experiment": list(accuracy), "accuracy": list(accuracy.values())},
                       schema={"experiment": pl.String, "accuracy": pl.Float64})
    m = m.join(acc, on="experiment", how="left").with_columns(
        accuracy_lo=pl.col("accuracy") - 0.05, accuracy_hi=pl.col("accuracy") + 0.05)
    return m, cfg.slo


def test_without_min_accuracy_the_cheapest_wins() -> None:
    m, slo = _metrics(None, {"cheap": 0.55, "good": 0.92})
    [rec] = recommend(m, slo)
    assert rec.lowest_cost is not None and rec.lowest_cost.experiment == "cheap"
    assert "minimum accuracy" not in rec.reasoning


def test_min_accuracy_makes_the_worse_configuration_ineligible() -> None:
    m, slo = _metrics(0.8, {"cheap": 0.55, "good": 0.92})
    [rec] = recommend(m, slo)
    assert rec.status == "meets_slo"
    assert rec.lowest_cost is not None and rec.lowest_cost.experiment == "good"
    assert rec.highest_throughput is not None and rec.highest_throughput.experiment == "good"
    assert {c.experiment for c in rec.excluded_accuracy} == {"cheap"}
    assert "Not eligible because it answers below the minimum accuracy of 80%: cheap (accuracy 55.0%" in rec.reasoning


def test_not_evaluated_counts_as_not_accurate_enough() -> None:
    m, slo = _metrics(0.8, {"cheap": None, "good": 0.92})
    [rec] = recommend(m, slo)
    assert rec.lowest_cost is not None and rec.lowest_cost.experiment == "good"
    assert "cheap (not evaluated" in rec.reasoning


def test_a_minimum_of_zero_asks_only_that_it_was_evaluated() -> None:
    # an accuracy of 0 meets a minimum of 0; not evaluated does not
    m, slo = _metrics(0.0, {"cheap": 0.0, "good": None})
    [rec] = recommend(m, slo)
    assert rec.status == "meets_slo" and rec.lowest_cost is not None and rec.lowest_cost.experiment == "cheap"
    assert [c.experiment for c in rec.excluded_accuracy] == ["good", "good"]
    assert "good (not evaluated" in rec.reasoning


def test_when_every_configuration_answers_worse_none_is_recommended() -> None:
    m, slo = _metrics(0.95, {"cheap": 0.55, "good": 0.92})
    [rec] = recommend(m, slo)
    assert rec.status == "below_accuracy"
    assert rec.lowest_cost is None and rec.highest_throughput is None
    assert rec.closest is not None and rec.closest.experiment == "good"
    assert "below the minimum accuracy of 95%, so none is recommended; the most accurate is good" in rec.reasoning


def test_min_accuracy_needs_an_evaluation_section() -> None:
    from fmbench.config import load_config_text
    from fmbench.errors import ConfigError

    with pytest.raises(ConfigError, match="min_accuracy needs an evaluation"):
        load_config_text("name: t\nbuckets: [[1, 10]]\ndatasets: [{name: d, source: synthetic}]\n"
                         "experiments: [{name: e, endpoint: {provider: simulated}}]\nslo: {min_accuracy: 0.5}\n")
