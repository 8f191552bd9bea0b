"""A whole run against a simulated endpoint that serves one request at a time: offered more than it can
serve, its shard is flagged overloaded, fails the SLOs, is not recommended and is named in the report;
offered what it can serve, its shard is not flagged."""

from __future__ import annotations

from pathlib import Path

import polars as pl

import fmbench
from fmbench.loadgen import ShardResult
from fmbench.metrics import recommend

SERVED, OFFERED_TOO_MUCH = 8.0, 100.0  # requests/s; the endpoint serves about 28/s (one at a time, ~35 ms each)


def test_an_endpoint_offered_more_than_it_serves_is_overloaded_and_never_recommended(tmp_path: Path) -> None:
    raw = {
        "name": "overload",
        "output": str(tmp_path / "results"),
        "buckets": [[1, 200]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 4, "seed": 1}],
        "experiments": [{
            "name": "sim",
            "endpoint": {"provider": "simulated", "ttft_ms": 20, "tpot_ms": 5, "output_tokens": 4, "max_batch": 1},
            "inference": {"max_tokens": 4, "stream": True},
            "request_rates": [SERVED, OFFERED_TOO_MUCH],
            "requests_per_level": 50,
            "warmup_requests": 2,
            "pricing": {"hourly_usd": 1.0},
        }],
        # Lenient enough that the backlog's latencies pass: only the overload verdict keeps the
        # overloaded shard (the cheapest per request, the most transactions/min) from being chosen.
        "slo": {"latency_p95_s": 5.0, "max_error_rate": 0.0},
    }
    result = fmbench.run_benchmark(raw, progress=False, png=False)
    rows = {r["request_rate"]: r for r in result.metrics.iter_rows(named=True)}

    served, flooded = rows[SERVED], rows[OFFERED_TOO_MUCH]
    assert not served["overloaded"] and served["overload_reason"] is None
    assert 0.8 < served["completion_rate"] < 1.2
    assert served["meets_slo"], served["slo_failures"]

    assert flooded["overloaded"], flooded["completion_rate"]
    assert flooded["completion_rate"] < 0.6  # about 28 of the 100 offered per second
    assert "req/s offered" in flooded["overload_reason"]
    assert flooded["latency_p95_s"] < 5.0  # its latencies alone would pass ...
    assert not flooded["meets_slo"] and flooded["slo_failures"].startswith("endpoint overloaded")  # ... it does not

    cfg = fmbench.load_config(raw)
    (rec,) = recommend(result.metrics, cfg.slo)
    assert rec.best is None or rec.best.request_rate == SERVED
    # (On a busy machine the client can dispatch late, which makes a shard invalid whatever the
    # endpoint did: an invalid shard is counted as such, and one the client served is recommended.)
    if flooded["valid"]:
        assert len(rec.excluded_overloaded) == 1 and "1 overloaded shard" in rec.reasoning
    if served["valid"]:
        assert rec.best is not None

    for report in (result.report, result.report_html):
        text = Path(report).read_text()
        assert "Endpoint overloaded" in text
        assert flooded["overload_reason"] in text

    # The run's stored shard outcome says it too, and a result file from before the verdict still loads.
    shards = pl.read_parquet(Path(result.run_dir) / "metrics.parquet")
    assert shards.filter(pl.col("overloaded"))["request_rate"].to_list() == [OFFERED_TOO_MUCH]
    old = {"shard_id": "s", "records_path": "r.parquet", "requests": 1, "warmup": 0, "errors": 0,
           "t_first_start": 0.0, "t_last_end": 1.0, "duration_s": 1.0, "achieved_rate": 1.0,
           "send_lag_p99_s": 0.0, "dispatch_lag_p99_s": 0.0, "valid": True, "client_cpu_s": 0.1}
    loaded = ShardResult.model_validate(old)
    assert not loaded.overloaded and loaded.completion_rate is None and loaded.overload_reason is None
