"""Self-calibration: measured on this host, stored in the run, used to plan processes and flag shards."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fmbench.calibration import (
    CEILING_WARN,
    Calibration,
    calibrate_host,
    expected_shape,
    load_calibration,
    plan_processes,
    save_calibration,
)
from fmbench.config import load_config_text
from fmbench.loadgen import ShardSpec
from fmbench.pipeline import PromptSet, plan_shards, run_benchmark
from fmbench.report.render import _client_rows
from fmbench.rundir import Manifest


def _cal(**kw: Any) -> Calibration:
    base: dict[str, Any] = {
        "created_at": "2026-01-01T00:00:00Z", "host": "h", "cpu_count": 4, "load_avg": [0.0, 0.0, 0.0], "python": "3.11",
        "duration_s": 2.0, "rtt_p50_ms": 0.2, "rtt_p99_ms": 0.5, "max_request_rate": 2000.0, "max_stream_rate": 1000.0,
        "max_chunk_rate": 256_000.0, "request_cost_s": 1 / 2000, "chunk_cost_s": 2e-6, "cpu_per_request_ms": 0.4,
        "client_cpu_util": 1.0,
    }
    return Calibration(**(base | kw))


def _spec(**kw: Any) -> ShardSpec:
    base: dict[str, Any] = {"shard_id": "s", "experiment": "e", "dataset": "d", "bucket": "0-9", "bucket_min": 0,
                                "bucket_max": 9, "requests": 10}
    return ShardSpec(**(base | kw))


def test_calibrate_host_measures_a_plausible_ceiling_and_round_trips(tmp_path: Path) -> None:
    cal = calibrate_host(duration_s=1.0)
    # Loose bounds that hold on a loaded 2-core machine: the client handles at least a few hundred
    # requests/s against a zero-latency server, and a round trip is well under 50 ms.
    assert cal.max_request_rate > 200 and cal.max_chunk_rate > cal.max_stream_rate > 20
    assert 0 < cal.rtt_p50_ms <= cal.rtt_p99_ms < 50
    assert cal.request_cost_s > 0 and cal.chunk_cost_s >= 0 and cal.cpu_per_request_ms > 0
    assert len(cal.load_avg) == 3 and cal.cpu_count >= 1 and "req/s" in cal.summary()
    assert load_calibration(str(tmp_path)) is None
    save_calibration(str(tmp_path), cal)
    assert load_calibration(str(tmp_path)) == cal


def test_load_fraction_counts_requests_and_chunks() -> None:
    cal = _cal()
    assert cal.load_fraction(1000, 0) == pytest.approx(0.5)
    assert cal.load_fraction(1000, 250) == pytest.approx(0.5 + 0.5)
    assert cal.load_fraction(1000, 250, processes=2) == pytest.approx(0.5)


def test_plan_processes_spreads_only_what_one_process_cannot_offer() -> None:
    cal = _cal()
    assert plan_processes(_spec(request_rate=100.0), cal, 0) == 1
    assert plan_processes(_spec(request_rate=1500.0), cal, 0) == 2  # 0.75 of one ceiling
    assert plan_processes(_spec(request_rate=50_000.0), cal, 0) == 4  # capped at the CPUs
    assert plan_processes(_spec(request_rate=50_000.0), cal, 0, max_processes=3) == 3
    assert plan_processes(_spec(request_rate=5000.0, max_concurrency=8), cal, 0) == 1  # cap cannot split
    assert plan_processes(_spec(request_rate=5000.0), None, 0) == 1  # no calibration
    # closed loop: concurrency over the expected latency; unknown latency stays in one process
    assert plan_processes(_spec(concurrency=256), cal, 100, expected_latency_s=1.0) == 1
    assert plan_processes(_spec(concurrency=256), cal, 100, expected_latency_s=0.01) == 4
    assert plan_processes(_spec(concurrency=2), cal, 100, expected_latency_s=0.0) == 2  # at most concurrency
    assert plan_processes(_spec(concurrency=256), cal, 100) == 1


def test_report_rows_flag_shards_near_the_ceiling() -> None:
    cal = _cal()
    manifest = {"calibration": cal.model_dump() | {"summary": cal.summary()},
                "shards": [{"shard_id": "cool", "client_load": 0.2, "processes": 1},
                           {"shard_id": "hot", "client_load": CEILING_WARN + 0.1, "processes": 2}]}
    rows = dict(_client_rows(Manifest.model_validate(manifest)))
    assert rows["Client calibration"] == cal.summary()
    flagged = [v for k, v in rows.items() if "ceiling" in k]
    assert len(flagged) == 1 and "results may reflect the client" in flagged[0]
    assert "hot (80% of the ceiling, 2 process(es))" in flagged[0] and "cool" not in flagged[0]
    assert _client_rows(Manifest()) == []


FAST = 2_000_000.0  # req/s: more than any client process can send

CONFIG = """
name: openloop
tokenizer: cl100k_base
buckets: [[1, 500]]
datasets:
  - {name: synthetic, source: synthetic, prompts_per_bucket: 8, seed: 0}
experiments:
  - name: sim
    endpoint: {provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4, max_batch: 64}
    inference: {max_tokens: 4, stream: true}
    request_rates: [20, 2000000]
    requests_per_level: 40
    warmup_requests: 0
"""


def test_a_run_calibrates_and_flags_a_rate_the_client_cannot_offer(tmp_path: Path) -> None:
    cfg = load_config_text(CONFIG)
    assert expected_shape(cfg.experiments[0]) == (4, pytest.approx(0.009))
    report = run_benchmark(cfg, output=str(tmp_path), run_id="r1")
    run_dir = tmp_path / "openloop" / "r1"
    cal = load_calibration(str(run_dir))
    assert cal is not None and cal.max_request_rate > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["calibration"]["summary"] == cal.summary()
    shards = {s["request_rate"]: s for s in manifest["shards"]}
    # Whether 20 req/s is valid depends on what else runs on this machine (a loaded CPU delays the
    # dispatch past its limit, and the shard then rightly says so); what it must never be is "could
    # not keep up", which is about the rate the calibrated client can offer.
    assert shards[20.0]["valid"] or "could not keep up" not in (shards[20.0]["invalid_reason"] or "")
    assert shards[20.0]["client_load"] is not None and shards[20.0]["client_load"] < CEILING_WARN
    assert shards[20.0]["client_cpu_s"] > 0
    # spread over processes from the calibration: 2M req/s needs every CPU, 20 req/s one process
    assert shards[20.0]["processes"] == 1 and shards[FAST]["processes"] == (os.cpu_count() or 1)
    # 2M req/s is beyond any client on any machine, even spread over every CPU (a fast 2-core host
    # offered 20,000 req/s from two processes, so that rate proved nothing): detected, flagged,
    # never silently reported
    assert not shards[FAST]["valid"] and "could not keep up" in shards[FAST]["invalid_reason"]
    metrics = pl.read_parquet(run_dir / "metrics.parquet")
    fast = metrics.filter(pl.col("request_rate") == FAST)
    assert fast["valid"].to_list() == [False]
    requests = pl.read_parquet(run_dir / "requests.parquet")
    assert requests["send_lag_s"].null_count() == 0
    # latency counts from the scheduled time: it includes the client's lateness
    assert (requests["latency_s"] >= requests["t_end"] - requests["t_start"] - 1e-9).all()
    text = Path(report).read_text()
    assert "Client calibration" in text and "could not keep up" in text


def test_config_processes_override_the_plan() -> None:
    cfg = load_config_text(CONFIG.replace("request_rates: [20, 2000000]", "concurrency_levels: [1, 4]\n"
                                          "    request_rates: [50]\n    processes: 2"))
    ps = [PromptSet(dataset="synthetic", files={"1-500": "unused"}, counts={"1-500": 8})]
    got = {(s.concurrency, s.request_rate): s.processes for s in plan_shards(cfg, ps, cfg.experiments[0])}
    assert got == {(1, None): 1, (4, None): 2, (1, 50.0): 2}  # never more processes than concurrency
    capped = cfg.experiments[0].model_copy(update={"max_concurrency": 8, "concurrency_levels": None})
    assert [s.processes for s in plan_shards(cfg, ps, capped)] == [1]  # a cap cannot be split


def test_a_client_hosts_load_counts_its_measured_requests_not_its_warm_ups_and_retried_attempts() -> None:
    # As one host's load is counted (final attempts over the measured time): a host that wrote 100
    # records, 60 of them warm-ups and earlier attempts, carried 40 measured requests.
    from fmbench.loadgen.hosts import HostClock
    from fmbench.pipeline.shards import _hosts_load

    cal = _cal(request_cost_s=0.01, chunk_cost_s=0.0)
    clocks = [HostClock(host=h, address=f"tcp://{h}", offset_s=0.0, uncertainty_s=0.0, shift_s=0.0,
                        concurrency=2, requests=100) for h in ("host-a", "host-b")]
    load = _hosts_load(clocks, {"host-a": 40, "host-b": 20}, 10.0, 0.0, cal)
    assert load == pytest.approx(cal.load_fraction(4.0, 0.0))  # host-a's 40 measured requests in 10 s
