"""Benchmark 5, long context: 32k-token prompts, 1,000-token streamed answers, concurrency 64.

Two parts:

* ``zero``: the real engine + `OpenAIClient` against the zero-latency server streaming 1,000
  chunks per answer, with 100-token and 32k-token prompts: client throughput (chunks/s) and CPU
  per chunk. Long prompts must not collapse it (request bodies of ~130 KB, one SSE parse per
  read, no quadratic buffers): the ratio long/short is reported.
* ``simulated`` (full mode): the simulated endpoint pacing 1,000 tokens at 10 ms each to 64
  concurrent 32k-token requests: achieved tokens/s against the ideal, and the measured TPOT
  against the configured 10 ms.

Run: ``uv run --no-sync python -m benchmarks.long_context [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks._common import loadavg, parser, write_result
from fmbench.config import InferenceConfig, SimulatedEndpoint
from fmbench.endpoints.openai import OpenAIClient
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.protocol import Prompt
from fmbench.simulator import SimulatedServerProcess
from fmbench.simulator.zeroserver import ZeroServer

CONC = 64
OUT = 1000
LONG = 32_000


def _prompts(tokens: int) -> list[Prompt]:
    return [Prompt(f"p{i}", " ".join(f"w{i}" for _ in range(tokens)), tokens) for i in range(4)]


def _run(url: str, model: str, prompt_tokens: int, requests: int, tmp: Path, warmup: int) -> dict[str, Any]:
    client = OpenAIClient(url, model, api="completions",
                          inference=InferenceConfig(stream=True, max_tokens=OUT, timeout_s=600))
    spec = ShardSpec(shard_id="lc", experiment="e", dataset="d", bucket="b", bucket_min=0, bucket_max=1,
                     concurrency=CONC, requests=requests, warmup=warmup)
    res = run_shard(client, _prompts(prompt_tokens), spec, tmp / "lc.parquet", len)
    df = pl.read_parquet(res.records_path).filter(~pl.col("warmup") & pl.col("ok"))
    chunks = int(df["chunks"].sum())
    return {"prompt_tokens": prompt_tokens, "requests": res.requests, "errors": res.errors,
            "req_s": round(res.requests / res.duration_s, 2), "chunks_s": round(chunks / res.duration_s, 1),
            "tokens_s": round(int(df["output_tokens"].sum()) / res.duration_s, 1),
            "client_cpu_us_per_chunk": round(res.client_cpu_s / max(1, chunks) * 1e6, 2),
            "tpot_p50_ms": round(float(df["tpot_s"].median() or 0) * 1e3, 3),
            "tpot_p99_ms": round(float(df["tpot_s"].quantile(0.99) or 0) * 1e3, 3),
            "load_avg": loadavg()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure and write results/long_context.json."""
    args = parser(__doc__).parse_args(argv)
    n = 128 if args.quick else 512
    t0 = time.monotonic()
    data: dict[str, Any] = {"quick": args.quick, "concurrency": CONC, "output_tokens": OUT}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with ZeroServer() as srv:
            rows = [_run(srv.base_url(OUT), "m", p, n, tmp, 8) for p in (100, LONG, 100, LONG)]
        short = max((r for r in rows if r["prompt_tokens"] == 100), key=lambda r: r["chunks_s"])
        long = max((r for r in rows if r["prompt_tokens"] == LONG), key=lambda r: r["chunks_s"])
        data["zero"] = {"short": short, "long": long, "all": rows,
                        "long_over_short": round(long["chunks_s"] / short["chunks_s"], 3)}
        print(f"zero-latency server, {OUT} chunks/answer, c={CONC}: 100-token prompts {short['chunks_s']:,.0f} "
              f"chunks/s ({short['client_cpu_us_per_chunk']} us CPU/chunk), 32k-token prompts {long['chunks_s']:,.0f}"
              f" chunks/s ({long['client_cpu_us_per_chunk']} us CPU/chunk): ratio {data['zero']['long_over_short']}"
              f" (load {long['load_avg'][0]})", flush=True)
        if not args.quick:
            tpot = 10.0
            cfg = SimulatedEndpoint(provider="simulated", ttft_ms=50.0, tpot_ms=tpot, output_tokens=OUT,
                                    max_batch=CONC, decode_slowdown=0.0)
            with SimulatedServerProcess(cfg) as sim:
                r = _run(f"{sim.url}/v1", cfg.model, LONG, CONC, tmp, 0)
            ideal = CONC * 1000.0 / tpot * OUT / (OUT + 50.0 / tpot)  # tokens/s with TTFT included
            r["ideal_tokens_s"] = round(ideal, 1)
            r["tokens_over_ideal"] = round(r["tokens_s"] / ideal, 3)
            data["simulated"] = r
            print(f"simulated endpoint, 32k prompts, {OUT} tokens at {tpot:g} ms, c={CONC}: {r['tokens_s']:,.0f} "
                  f"tokens/s of an ideal {ideal:,.0f} ({r['tokens_over_ideal']:.0%}); TPOT p50 {r['tpot_p50_ms']} ms "
                  f"p99 {r['tpot_p99_ms']} ms", flush=True)
    data["wall_s"] = round(time.monotonic() - t0, 1)
    data["target"] = "throughput must not collapse with 32k-token prompts (here: long/short chunk rate >= 0.5)"
    data["met"] = data["zero"]["long_over_short"] >= 0.5
    path = write_result(args.out, "long_context", data)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
