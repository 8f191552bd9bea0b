"""Shared pieces of the fault tests: a shard against a real simulated server, and its records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import polars as pl

from fmbench.config import InferenceConfig, SimulatedEndpoint
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.protocol import Prompt

MODEL = "fmbench-sim"
SIM = SimulatedEndpoint(provider="simulated", model=MODEL, ttft_ms=10, tpot_ms=1, output_tokens=8, seed=7)
PROMPTS = [Prompt(f"p{i}", f"prompt number {i} about faults", 6) for i in range(16)]

#: Switches of the ``odd_server`` fixture: ``flaky_down`` makes ``/flaky/v1`` drop every connection;
#: ``probed`` says ``/probed/v1`` answered its one request.
ODD_STATE = {"flaky_down": True, "probed": False}
#: The ``odd_server`` fixture's ``/crash-back/v1`` and ``/crash-gone/v1`` answer ``after`` requests each
#: (counted in ``served``), then drop every connection; ``/crash-back/v1`` answers again once ``back``.
CRASH_STATE: dict[str, Any] = {"after": 6, "served": {}, "back": False}

#: How the OpenAI client classifies each injected fault (records' error_kind; None = ok).
EXPECTED_KIND: dict[str, str | None] = {
    "none": None,
    "http_500": "server_error",
    "http_503": "server_error",
    "throttle": "throttled",
    "hang": "timeout",
    "reset": "protocol",  # mid-answer: the answer was cut off, the request had reached the endpoint
    "malformed": "protocol",
    "truncated": "protocol",
    "slow_first_byte": None,
}


def run_sim_shard(url: str, out: Path, *, requests: int, concurrency: int, timeout_s: float = 1.0,
                  retries: int = 0, shard_id: str = "s", warmup: int = 0, **spec: Any) -> tuple[Any, pl.DataFrame]:
    """Run one shard of the OpenAI client against ``url``; returns the result and its records."""
    client = make_client(SIM, InferenceConfig(max_tokens=8, timeout_s=timeout_s), url=url)
    shard = ShardSpec(shard_id=shard_id, experiment="e", dataset="d", bucket="1-100", bucket_min=1,
                      bucket_max=100, concurrency=concurrency, requests=requests, warmup=warmup,
                      request_retries=retries, **spec)
    result = run_shard(client, PROMPTS, shard, out, lambda text: len(text.split()))
    return result, pl.read_parquet(out)


def server_faults(url: str) -> dict[str, int]:
    """The server's own count of injected faults per kind."""
    return {k: v for k, v in httpx.get(f"{url}/fmbench/stats", timeout=10).json()["faults"].items() if v}
