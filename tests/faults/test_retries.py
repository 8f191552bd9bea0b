"""In-shard retries (``request_retries``): off by default; when on, every attempt is a record, the
final outcome of each request is identifiable, backoff is bounded and metrics count requests once."""

from __future__ import annotations

import itertools
from pathlib import Path

import polars as pl
import pytest

from fmbench.config import ExperimentConfig, InferenceConfig, SimulatedEndpoint
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.loadgen.retry import MAX_BACKOFF_S, RETRYABLE_KINDS, backoff_s, final_attempts
from fmbench.metrics import summarize
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.sim_shards import PROMPTS, SIM, run_sim_shard, server_faults

REQUESTS = 60
RETRIES = 2
FAULTS = FaultConfig(seed=5, http_500_rate=0.15, http_503_rate=0.1, throttle_rate=0.15, retry_after_s=0.3,
                     reset_rate=0.1)


def test_retries_are_off_by_default() -> None:
    assert ExperimentConfig(name="e", endpoint=SimulatedEndpoint(provider="simulated")).request_retries == 0
    assert ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="1-2", bucket_min=1, bucket_max=2,
                     requests=1).request_retries == 0


def test_backoff_doubles_honours_retry_after_and_is_bounded() -> None:
    assert [backoff_s(k) for k in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert backoff_s(1, retry_after_s=0.3) == 0.3
    assert backoff_s(30) == MAX_BACKOFF_S and backoff_s(1, retry_after_s=3600) == MAX_BACKOFF_S


@pytest.fixture(scope="module")
def retried(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, pl.DataFrame, dict[str, int]]:
    out = tmp_path_factory.mktemp("retry") / "s.parquet"
    with SimulatedServerProcess(SIM, faults=FAULTS) as server:
        assert server.url
        result, records = run_sim_shard(server.url, out, requests=REQUESTS, concurrency=6, retries=RETRIES)
        injected = server_faults(server.url)
    return result, records, injected


def test_every_attempt_is_a_record_and_the_final_outcome_is_identifiable(
    retried: tuple[object, pl.DataFrame, dict[str, int]],
) -> None:
    _, records, injected = retried
    # Each attempt reached the server once and is one record.
    assert records.height == sum(injected.values()) > REQUESTS
    per_request = records.group_by("request_id").agg(pl.col("attempt").sort().alias("attempts"))
    assert per_request.height == REQUESTS
    for attempts in per_request["attempts"].to_list():
        assert attempts == list(range(1, len(attempts) + 1)) and len(attempts) <= RETRIES + 1
    final = final_attempts(records).collect()
    assert final.height == REQUESTS and sorted(final["request_id"].to_list()) == list(range(REQUESTS))
    # Only the final attempt can be ok; every earlier one failed with a retryable kind.
    earlier = records.join(final.select("request_id", "attempt"), on=["request_id", "attempt"], how="anti")
    assert earlier.height == records.height - REQUESTS > 0
    assert not earlier["ok"].any() and set(earlier["error_kind"].to_list()) <= RETRYABLE_KINDS
    # A request that still failed used up its retries.
    assert (final.filter(~pl.col("ok"))["attempt"] == RETRIES + 1).all()


def test_backoff_between_attempts_is_bounded(retried: tuple[object, pl.DataFrame, dict[str, int]]) -> None:
    _, records, _ = retried
    rows = records.sort("request_id", "attempt").to_dicts()
    gaps = 0
    for prev, cur in itertools.pairwise(rows):
        if cur["request_id"] != prev["request_id"]:
            continue
        gap = cur["t_start"] - prev["t_end"]
        retry_after = 0.3 if prev["error_kind"] == "throttled" else None
        assert gap >= backoff_s(prev["attempt"], retry_after) - 0.005, (prev, cur)
        assert gap <= MAX_BACKOFF_S + 2.0  # generous: a loaded 2-core host delays wake-ups
        # Every attempt shares the request's scheduled time, so the final latency includes the retries.
        assert cur["t_scheduled"] == prev["t_scheduled"]
        gaps += 1
    assert gaps > 0


def test_metrics_count_each_request_once(retried: tuple[object, pl.DataFrame, dict[str, int]]) -> None:
    result, records, _ = retried
    final = final_attempts(records).collect()
    n_fail = final.filter(~pl.col("ok")).height
    row = summarize(records, None).row(0, named=True)
    assert row["requests"] == REQUESTS and row["errors"] == n_fail
    assert row["attempts"] == records.height
    assert row["error_rate"] == pytest.approx(n_fail / REQUESTS)
    assert result.requests == REQUESTS and result.errors == n_fail  # type: ignore[attr-defined]
    # The final latency counts from the first attempt's start.
    retried_ok = final.filter(pl.col("ok") & (pl.col("attempt") > 1))
    assert retried_ok.height > 0
    assert (retried_ok["latency_s"] > retried_ok["t_end"] - retried_ok["t_start"]).all()
    # One answered at its first attempt is timed as it would be without retries: from the client's own
    # send stamp (closed loop: scheduled when sent, no send lag).
    first = final.filter(pl.col("ok") & (pl.col("attempt") == 1) & ~pl.col("warmup"))
    assert first.height > 0
    assert (first["t_scheduled"] == first["t_start"]).all() and (first["send_lag_s"] == 0).all()
    assert (first["latency_s"] == first["t_end"] - first["t_start"]).all()


def test_a_client_error_is_not_retried(tmp_path: Path) -> None:
    with SimulatedServerProcess(SIM) as server:
        wrong = SimulatedEndpoint(provider="simulated", model="no-such-model")
        client = make_client(wrong, InferenceConfig(max_tokens=4, timeout_s=5), url=server.url)
        spec = ShardSpec(shard_id="s", experiment="e", dataset="d", bucket="1-100", bucket_min=1, bucket_max=100,
                         requests=4, request_retries=3)
        run_shard(client, PROMPTS, spec, tmp_path / "c.parquet", lambda t: 1)
    records = pl.read_parquet(tmp_path / "c.parquet")
    assert records.height == 4
    assert (records["attempt"] == 1).all() and (records["error_kind"] == "client_error").all()
