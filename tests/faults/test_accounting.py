"""Every scheduled request has exactly one record under every fault kind, classified as the server
injected it, and metrics count the failures (error rate, SLO verdict, failures beside latencies)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from fmbench.config import BenchmarkConfig
from fmbench.metrics import summarize
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.sim_shards import EXPECTED_KIND, SIM, run_sim_shard, server_faults

REQUESTS = 160
TIMEOUT_S = 1.0
FAULTS = FaultConfig(
    seed=3, http_500_rate=0.06, http_503_rate=0.06, throttle_rate=0.06, retry_after_s=0.5, hang_rate=0.04,
    reset_rate=0.06, malformed_rate=0.06, truncated_rate=0.06, slow_first_byte_rate=0.06,
    slow_first_byte_s=0.2,
)


@pytest.fixture(scope="module")
def faulty_records(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, dict[str, int]]:
    out = tmp_path_factory.mktemp("acct") / "s.parquet"
    with SimulatedServerProcess(SIM, faults=FAULTS) as server:
        assert server.url
        _, records = run_sim_shard(server.url, out, requests=REQUESTS, concurrency=12, timeout_s=TIMEOUT_S)
        injected = server_faults(server.url)
    return records, injected


def test_every_request_has_exactly_one_record(faulty_records: tuple[pl.DataFrame, dict[str, int]]) -> None:
    records, injected = faulty_records
    assert records.height == REQUESTS
    assert sorted(records["request_id"].to_list()) == list(range(REQUESTS))
    assert (records["attempt"] == 1).all()
    # The server saw exactly as many generation requests as there are records: none dropped, none sent twice.
    assert sum(injected.values()) == REQUESTS
    # Every kind was drawn at least once with this seed, so every path below is exercised.
    assert set(injected) == set(EXPECTED_KIND), injected


def test_each_fault_becomes_its_error_kind_with_exact_counts(
    faulty_records: tuple[pl.DataFrame, dict[str, int]],
) -> None:
    records, injected = faulty_records
    expected: Counter[str | None] = Counter()
    for kind, n in injected.items():
        expected[EXPECTED_KIND[kind]] += n
    got = Counter(records["error_kind"].to_list())
    assert got == expected
    failed = records.filter(~pl.col("ok"))
    assert failed["error"].null_count() == 0 and (failed["error"].str.len_chars() > 0).all()
    assert failed.filter(pl.col("error_kind") == "server_error")["http_status"].sort().to_list() == (
        [500] * injected["http_500"] + [503] * injected["http_503"])
    assert (failed.filter(pl.col("error_kind") == "throttled")["http_status"] == 429).all()
    ok = records.filter(pl.col("ok"))
    assert ok["error_kind"].null_count() == ok.height and (ok["output_tokens"] == 8).all()


def test_a_timed_out_request_counts_as_failed_not_fast(faulty_records: tuple[pl.DataFrame, dict[str, int]]) -> None:
    records, _ = faulty_records
    timeouts = records.filter(pl.col("error_kind") == "timeout")
    assert timeouts.height > 0 and not timeouts["ok"].any()
    # It failed after waiting for the timeout, so its latency is at least the timeout...
    assert timeouts["latency_s"].min() >= TIMEOUT_S * 0.95
    # ... and it is excluded from the latency percentiles, which are over successes only.
    metrics = summarize(records, None)
    ok_latency = records.filter(pl.col("ok"))["latency_s"]
    assert metrics["latency_p99_s"][0] <= ok_latency.max() + 1e-9


def test_error_rate_and_slo_count_failures(faulty_records: tuple[pl.DataFrame, dict[str, int]]) -> None:
    records, injected = faulty_records
    n_fail = sum(n for k, n in injected.items() if EXPECTED_KIND[k] is not None)
    cfg = BenchmarkConfig.model_validate({
        "name": "acct", "buckets": [[1, 100]],
        "datasets": [{"name": "d", "source": "synthetic", "prompts_per_bucket": 2}],
        "experiments": [{"name": "e", "endpoint": {"provider": "simulated"}}],
        "slo": {"latency_p95_s": 60.0, "max_error_rate": 0.05},
    })
    row = summarize(records, cfg).row(0, named=True)
    assert row["requests"] == REQUESTS
    assert row["errors"] == n_fail and row["successes"] == REQUESTS - n_fail
    assert row["error_rate"] == pytest.approx(n_fail / REQUESTS)
    assert row["attempts"] == REQUESTS
    # Latencies are generous (60 s), so only the failures can break the SLO.
    assert row["meets_slo"] is False
    assert "error" in (row["slo_failures"] or "").lower()


def test_report_table_puts_the_error_rate_beside_latencies(
    faulty_records: tuple[pl.DataFrame, dict[str, int]],
) -> None:
    from fmbench.report import metrics_table_rows
    from fmbench.report.tables import fmt_pct

    records, injected = faulty_records
    n_fail = sum(n for k, n in injected.items() if EXPECTED_KIND[k] is not None)
    (row,) = metrics_table_rows(summarize(records, None))
    keys = list(row)
    # The latencies (over successes) never stand alone: requests and error rate are in the same row.
    assert "p95 latency (s)" in keys and "Error rate" in keys and "Requests" in keys
    assert row["Requests"] == str(REQUESTS)
    assert keys.index("Failed") < keys.index("p50 latency (s)") and row["Failed"] == str(n_fail)
    assert row["Error rate"] == fmt_pct(n_fail / REQUESTS) and row["Error rate"] != fmt_pct(0.0)


def test_an_answer_without_usage_is_ok_and_counted_with_the_tokenizer(odd_server: str, tmp_path: Path) -> None:
    from fmbench.config import InferenceConfig, OpenAIEndpoint
    from fmbench.endpoints import make_client
    from fmbench.loadgen import ShardSpec, run_shard
    from tests.support.sim_shards import PROMPTS

    endpoint = OpenAIEndpoint(provider="openai", base_url=f"{odd_server}/nousage/v1", model="m")
    client = make_client(endpoint, InferenceConfig(max_tokens=8, timeout_s=5))
    spec = ShardSpec(shard_id="u", experiment="e", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                     concurrency=2, requests=6)
    run_shard(client, PROMPTS, spec, tmp_path / "u.parquet", lambda text: len(text.split()))
    records = pl.read_parquet(tmp_path / "u.parquet")
    assert records.height == 6 and records["ok"].all()
    assert (records["usage_source"] == "tokenizer").all()
    assert (records["output_tokens"] == 3).all()  # "no usage here", counted by the run's tokenizer
    assert records["input_tokens"].to_list() == [p.input_tokens for p in PROMPTS[:6]]
