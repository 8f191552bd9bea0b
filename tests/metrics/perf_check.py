"""Manual check (not a unit test): summarise 1,000,000 request records; prints seconds and peak RSS.

Usage: ``uv run --no-sync python tests/metrics/perf_check.py [PATH]``. Target: <= 5 s and
<= 1.5 GB peak on 2 cores. Measured on the 2-core dev machine: 0.4-0.9 s and ~0.6 GB peak (imports included).
With the ITL percentiles (pooled gaps, issue 12) and the machine shared by other work (load ~5): 3.3-4.0 s
and ~0.64 GB here (2 gaps per request); with 64 gaps per request (64M gaps) ~21 s and ~2.3 GB, most of it
reading and sorting the gaps.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import time

import numpy as np
import polars as pl

from fmbench.config import parse_config
from fmbench.metrics import summarize
from fmbench.records import REQUEST_SCHEMA

N = 1_000_000
SHARDS = 200


def generate(path: str) -> None:
    rng = np.random.default_rng(0)
    sid = rng.integers(0, SHARDS, N)
    lat = rng.gamma(2.0, 0.5, N)
    t0 = rng.uniform(0, 1000, N)
    df = pl.DataFrame({
        "experiment": pl.Series([f"e{i % 4}" for i in range(SHARDS)]).gather(sid),
        "dataset": ["d"] * N, "bucket": pl.Series(["1-500", "500-1000"]).gather(sid % 2),
        "bucket_min": pl.Series([1, 500]).gather(sid % 2), "bucket_max": pl.Series([500, 1000]).gather(sid % 2),
        "concurrency": (sid // 8 + 1).astype(np.int64), "request_rate": [None] * N,
        "shard_id": pl.Series([f"s{i}" for i in range(SHARDS)]).gather(sid), "request_id": np.arange(N),
        "prompt_id": ["p"] * N, "attempt": [1] * N, "warmup": rng.random(N) < 0.01, "ok": rng.random(N) > 0.02,
        "error_kind": [None] * N, "error": [None] * N, "http_status": [200] * N,
        "input_tokens": rng.integers(1, 1000, N), "output_tokens": rng.integers(1, 200, N),
        "usage_source": ["server"] * N, "t_scheduled": t0, "t_start": t0, "t_first_token": t0 + 0.1,
        "t_end": t0 + lat, "send_lag_s": np.zeros(N), "ttft_s": np.full(N, 0.1), "latency_s": lat,
        "tpot_s": lat / 100, "itl_s": [[0.01, 0.02]] * N, "chunks": [2] * N, "text": [None] * N,
    }, schema=REQUEST_SCHEMA)
    df.write_parquet(path)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/fmbench-req1m.parquet"
    if not os.path.exists(path):
        # generate in a child process so its memory does not count in this process's peak
        child = multiprocessing.Process(target=generate, args=(path,))
        child.start()
        child.join()
    cfg = parse_config({
        "name": "t", "buckets": [[1, 500], [500, 1000]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": f"e{i}", "endpoint": {"provider": "simulated"}, "pricing": {"hourly_usd": 2.0}}
                        for i in range(4)],
    })
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    metrics = summarize(pl.scan_parquet(path), cfg)
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{N:,} records -> {metrics.height} shards in {took:.2f} s; peak RSS {peak:.0f} MB "
          f"(after imports {rss_before:.0f} MB)")


if __name__ == "__main__":
    main()
