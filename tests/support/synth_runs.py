"""A deterministic generator of synthetic run directories for report tests (written with fmbench.storage)."""

from __future__ import annotations

import heapq
import json
import random
from dataclasses import dataclass
from typing import Any

from fmbench import storage
from fmbench.config import dump_config, parse_config
from fmbench.records import RequestRecord, records_frame


@dataclass
class SimExperiment:
    """How a synthetic endpoint behaves: latency grows with concurrency, a fixed share of requests fail."""

    name: str
    ttft_s: float = 0.08
    tpot_s: float = 0.004
    slowdown: float = 0.10  # fractional TPOT growth per extra request in flight
    error_p: float = 0.0
    pricing: dict[str, Any] | None = None


def run_config(name: str, experiments: list[SimExperiment], levels: list[int], slo: dict[str, Any],
               buckets: list[list[int]]) -> dict[str, Any]:
    return {
        "name": name,
        "description": "Synthetic run for report tests.",
        "buckets": buckets,
        "datasets": [{"name": "synth", "source": "synthetic", "prompts_per_bucket": 10, "seed": 7}],
        "experiments": [
            {"name": e.name, "endpoint": {"provider": "simulated", "tpot_ms": e.tpot_s * 1000},
             "concurrency_levels": levels, "requests_per_level": 30, "warmup_requests": 2,
             **({"pricing": e.pricing} if e.pricing else {})}
            for e in experiments
        ],
        "slo": slo,
    }


def simulate_shard(rng: random.Random, e: SimExperiment, bucket: tuple[int, int], conc: int, n: int,
                   warmup: int, t0: float, shard_id: str) -> list[RequestRecord]:
    """Closed-loop simulation: ``conc`` workers each send the next request when the last one ends."""
    free = [(t0, w) for w in range(conc)]
    heapq.heapify(free)
    out = []
    for i in range(warmup + n):
        start, w = heapq.heappop(free)
        in_tok = rng.randint(bucket[0], bucket[1] - 1)
        out_tok = 64
        ttft = e.ttft_s + in_tok * 2e-5 + rng.uniform(0, 0.02)
        tpot = e.tpot_s * (1 + e.slowdown * (conc - 1)) * rng.uniform(0.95, 1.05)
        lat = ttft + tpot * (out_tok - 1)
        ok = rng.random() >= e.error_p
        rec = RequestRecord(
            experiment=e.name, dataset="synth", bucket=f"{bucket[0]}-{bucket[1]}", bucket_min=bucket[0],
            bucket_max=bucket[1], concurrency=conc, shard_id=shard_id, request_id=i, prompt_id=f"p{i % 10}",
            warmup=i < warmup, ok=ok, http_status=200 if ok else 503,
            error_kind=None if ok else "server_error", error=None if ok else "HTTP 503: model overloaded",
            input_tokens=in_tok, output_tokens=out_tok if ok else None, usage_source="server" if ok else None,
            t_scheduled=start, t_start=start, t_first_token=start + ttft if ok else None,
            t_end=start + (lat if ok else 0.5), send_lag_s=0.0, ttft_s=ttft if ok else None,
            latency_s=lat if ok else None, tpot_s=tpot if ok else None,
            itl_s=[tpot] * 3 if ok else [], chunks=out_tok if ok else 0,
        )
        out.append(rec)
        heapq.heappush(free, (rec.t_end or start, w))
    return out


def write_run(url: str, *, name: str = "synth-bench", run_id: str = "20260101-000000-abcd", seed: int = 1,
              experiments: list[SimExperiment] | None = None, levels: list[int] | None = None,
              slo: dict[str, Any] | None = None, buckets: list[list[int]] | None = None,
              failed_shard: bool = True, invalid_shard: bool = True) -> dict[str, Any]:
    """Write config.yml, manifest.json and requests.parquet of a synthetic run under ``url``."""
    experiments = experiments or [
        SimExperiment("sim-small", tpot_s=0.004, slowdown=0.15, pricing={"instance_type": "ml.g5.xlarge"}),
        SimExperiment("sim-big", tpot_s=0.003, slowdown=0.05, error_p=0.02,
                      pricing={"instance_type": "ml.g5.12xlarge"}),
    ]
    levels = levels or [1, 4, 8]
    slo = slo if slo is not None else {"latency_p95_s": 0.6, "ttft_p95_s": 0.3, "max_error_rate": 0.05}
    buckets = buckets or [[1, 500], [500, 1000]]
    cfg = parse_config(run_config(name, experiments, levels, slo, buckets))
    rng = random.Random(seed)
    records: list[RequestRecord] = []
    shards: list[dict[str, Any]] = []
    t = 1000.0
    for e in experiments:
        for lo, hi in buckets:
            for conc in levels:
                sid = f"{e.name}.synth.{lo}-{hi}.c{conc}"
                if failed_shard and e is experiments[-1] and conc == levels[-1] and lo == buckets[-1][0]:
                    shards.append({"shard_id": sid, "experiment": e.name, "dataset": "synth",
                                   "bucket": f"{lo}-{hi}", "concurrency": conc, "request_rate": None,
                                   "status": "failed", "error": "EndpointConnectionError: connection refused",
                                   "valid": True, "invalid_reason": None, "duration_s": 0.1, "client_cpu_s": 0.0})
                    continue
                recs = simulate_shard(rng, e, (lo, hi), conc, 30, 2, t, sid)
                records += recs
                end = max(r.t_end or 0.0 for r in recs)
                invalid = invalid_shard and e is experiments[0] and conc == levels[-1] and lo == buckets[0][0]
                shards.append({"shard_id": sid, "experiment": e.name, "dataset": "synth", "bucket": f"{lo}-{hi}",
                               "concurrency": conc, "request_rate": None, "status": "ok", "error": None,
                               "valid": not invalid,
                               "invalid_reason": "client CPU saturated (97% of a core)" if invalid else None,
                               "duration_s": end - t, "client_cpu_s": 0.2})
                t = end + 1.0
    manifest = {
        "tool_version": "0.1.0", "packages": {"polars": "2.1.0", "plotly": "7.1.0"},
        "host": {"hostname": "test-host", "cpu_count": 2}, "python": "3.12.0",
        "config_hash": cfg.config_hash(), "run_id": run_id, "name": name,
        "started_at": "2026-01-01T00:00:00+00:00", "ended_at": "2026-01-01T00:05:30+00:00",
        "seeds": {"synth": 7}, "tokenizer": cfg.tokenizer,
        "command": f"fmbench run configs/{name}.yml --run-id {run_id}", "storage": url, "shards": shards,
    }
    storage.write_text(storage.join(url, "config.yml"), dump_config(cfg))
    storage.write_text(storage.join(url, "manifest.json"), json.dumps(manifest, indent=2))
    storage.write_parquet(storage.join(url, "requests.parquet"), records_frame(records))
    return {"cfg": cfg, "manifest": manifest, "records": records}
