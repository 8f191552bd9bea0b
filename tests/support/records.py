"""Small configs and hand-made request records for the metrics and cost tests."""

from __future__ import annotations

from typing import Any

from fmbench.config import parse_config
from fmbench.records import RequestRecord


def make_cfg(pricing: dict[str, Any] | None = None, slo: dict[str, Any] | None = None,
             names: tuple[str, ...] = ("exp",)) -> Any:
    """A config of simulated experiments ``names`` with the given pricing and SLO."""
    return parse_config({
        "name": "t", "buckets": [[1, 500]], "datasets": [{"name": "d", "source": "synthetic"}],
        "experiments": [{"name": n, "endpoint": {"provider": "simulated"},
                         **({"pricing": pricing} if pricing else {})} for n in names],
        "slo": slo or {},
    })


def rec(i: int, start: float, latency: float | None, *, ok: bool = True, warmup: bool = False,
        experiment: str = "exp", concurrency: int = 1, ttft: float | None = 0.1, out: int | None = 50,
        inp: int = 100, kind: str | None = None, shard_id: str | None = None) -> RequestRecord:
    """Request ``i`` of a shard, started at ``start`` and lasting ``latency`` (failed: of ``kind``)."""
    end = start + (latency if latency is not None else 0.2)
    return RequestRecord(
        experiment=experiment, dataset="d", bucket="1-500", bucket_min=1, bucket_max=500,
        concurrency=concurrency, shard_id=shard_id or f"{experiment}-c{concurrency}", request_id=i,
        prompt_id=f"p{i}", warmup=warmup, ok=ok, error_kind=None if ok else (kind or "timeout"),
        error=None if ok else f"{kind or 'timeout'} #{i}", input_tokens=inp, output_tokens=out if ok else None,
        t_scheduled=start, t_start=start, t_first_token=start + ttft if (ok and ttft) else None, t_end=end,
        ttft_s=ttft if ok else None, latency_s=latency if ok else None,
        tpot_s=((latency - ttft) / (out - 1)) if (ok and latency and ttft and out and out > 1) else None,
    )


def assert_warmups_done_first(df: Any) -> None:
    """A closed loop's records: every measured request started after every warm-up had ended (none
    held part of the measured concurrency or fell inside the measured window)."""
    warm = df.filter(df["warmup"])
    measured = df.filter(~df["warmup"])
    assert warm.height and measured.height, "a shard with warm-ups and measured requests"
    first, last_warm = measured["t_start"].min(), warm["t_end"].max()
    assert first >= last_warm, f"measured requests started {last_warm - first:.4f} s before the last warm-up ended"
