"""Benchmark 3, orchestration overhead: a 30-shard Prefect flow's wall time vs its shards' own time.

Runs the real `flows.benchmark` flow (ephemeral Prefect server, PREFECT_HOME in a temp dir)
on the simulated endpoint: one experiment, 30 open-loop shards whose length is set by
``--shard-s`` (requests = rate x seconds). Reported:

* ``flow_wall_s``: the whole flow, config to report (includes the Prefect server start-up, the
  endpoint process, bucketing, metrics and the report: fixed costs of a run);
* ``shards_sum_s``: the sum of the shards' measured durations (first send to last answer);
* ``gaps``: between consecutive shards (previous last answer to next first send, from the
  records' ``time.monotonic()`` stamps): the per-shard cost of orchestration;
* the overhead at the measured shard length, and extrapolated to 30 s shards
  (per-shard gap / (30 s + gap)), which is what the target speaks of.

Run: ``uv run --no-sync python -m benchmarks.orchestration [--quick] [--shard-s S]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import loadavg, parser, pct, write_result

SHARDS = 30
CONFIG = """
name: orchestration-bench
tokenizer: cl100k_base
buckets: [[1, 500]]
datasets:
  - {{name: synthetic, source: synthetic, prompts_per_bucket: 16, seed: 0}}
experiments:
  - name: sim
    endpoint: {{provider: simulated, ttft_ms: 20, tpot_ms: 2, output_tokens: 16, max_batch: 64}}
    inference: {{max_tokens: 16, stream: true}}
    request_rates: {rates}
    requests_per_level: {requests}
    warmup_requests: 0
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the flow and write results/orchestration.json."""
    p = parser(__doc__)
    p.add_argument("--shard-s", type=float, default=None, help="Target length of each shard, seconds.")
    args = p.parse_args(argv)
    shard_s = args.shard_s or (0.5 if args.quick else 5.0)
    rates = [20.0 + 0.5 * i for i in range(SHARDS)]
    requests = max(2, round(20.0 * shard_s))
    home = tempfile.mkdtemp(prefix="fmbench-bench-prefect-")
    for k in [k for k in os.environ if k.startswith("PREFECT_")]:
        del os.environ[k]
    os.environ.update({"PREFECT_HOME": home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                       "PREFECT_LOGGING_LEVEL": "WARNING"})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import polars as pl

    from flows.benchmark import benchmark

    la = loadavg()
    with tempfile.TemporaryDirectory() as out:
        cfg = CONFIG.format(rates=json.dumps(rates), requests=requests)
        t0 = time.monotonic()
        report = benchmark(config=cfg, output=out, run_id="bench")
        wall = time.monotonic() - t0
        run_dir = Path(out) / "orchestration-bench" / "bench"
        manifest = json.loads((run_dir / "manifest.json").read_text())
        req = pl.read_parquet(run_dir / "requests.parquet")
    shards = manifest["shards"]
    ok = [s for s in shards if s["status"] == "ok"]
    shards_sum = sum(s["duration_s"] or 0.0 for s in ok)
    spans = (req.group_by("shard_id").agg(pl.col("t_scheduled").min().alias("a"), pl.col("t_end").max().alias("b"))
             .sort("a"))
    a, b = spans["a"].to_list(), spans["b"].to_list()
    gaps = [a[i + 1] - b[i] for i in range(len(a) - 1)]
    phase = b[-1] - a[0] if a else 0.0
    gap50 = pct(gaps, 0.5)
    data = {
        "quick": args.quick, "shards": len(shards), "shards_ok": len(ok), "report": str(report),
        "shard_target_s": shard_s, "requests_per_shard": requests, "load_avg": la, "load_avg_end": loadavg(),
        "flow_wall_s": round(wall, 2), "shards_sum_s": round(shards_sum, 2),
        "shard_phase_s": round(phase, 2),
        "overhead_whole_flow": round(1 - shards_sum / wall, 4),
        "overhead_shard_phase": round(1 - shards_sum / phase, 4) if phase else None,
        "gap_p50_s": round(gap50, 4), "gap_max_s": round(max(gaps), 4) if gaps else None,
        "fixed_cost_s": round(wall - phase, 2),
        "before_first_shard_s": round(a[0] - t0, 2) if a else None,
        "after_last_shard_s": round(t0 + wall - b[-1], 2) if b else None,
        "overhead_at_30s_shards": round(gap50 / (30.0 + gap50), 4),
        "overhead_at_30s_shards_with_fixed": round((SHARDS * gap50 + (wall - phase)) / (SHARDS * 30.0 + SHARDS * gap50
                                                                                      + (wall - phase)), 4),
        "target": "orchestration overhead <= 5% of wall time for shards of >= 30 s",
    }
    data["met"] = data["overhead_at_30s_shards_with_fixed"] <= 0.05
    print(f"{len(ok)}/{len(shards)} shards ok; flow wall {wall:.1f} s, shards {shards_sum:.1f} s, "
          f"shard phase {phase:.1f} s; gap between shards p50 {gap50 * 1e3:.0f} ms, max "
          f"{data['gap_max_s'] * 1e3:.0f} ms; fixed cost {data['fixed_cost_s']:.1f} s (before the first shard "
          f"{data['before_first_shard_s']} s, after the last {data['after_last_shard_s']} s); overhead at 30 s "
          f"shards {data['overhead_at_30s_shards_with_fixed']:.2%} (load {la[0]})", flush=True)
    path = write_result(args.out, "orchestration", data)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
