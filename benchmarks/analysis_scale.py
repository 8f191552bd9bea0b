"""Benchmark 4, analysis at scale: metrics and report over 1,000,000 request records.

Generates a run directory (config.yml, manifest.json with 200 shards, requests.parquet with
1,000,000 records of `fmbench.records.REQUEST_SCHEMA`) in a child process, then in fresh child
processes measures wall time and peak RSS (``ru_maxrss``, imports included) of:

* ``metrics``: `fmbench.metrics.summarize` over the records;
* ``report``: `fmbench.report.render_report` on the run directory (it computes the metrics
  first, then figures, PNGs, markdown and HTML);
* ``report_no_png``: the same with ``png=False``: what the report computes itself, without the
  browser that renders the PNGs meanwhile in a child process (the longer of the two sets the wall time).

Target: <= 5 s and <= 1.5 GB peak. Run: ``uv run --no-sync python -m benchmarks.analysis_scale [--quick]``
(``--quick`` uses 200,000 records).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import loadavg, parser, write_result

SHARDS = 200
CONFIG: dict[str, Any] = {
    "name": "scale", "buckets": [[1, 500], [500, 1000]],
    "datasets": [{"name": "d", "source": "synthetic"}],
    "experiments": [{"name": f"e{i}", "endpoint": {"provider": "simulated"}, "pricing": {"hourly_usd": 2.0}}
                    for i in range(4)],
}


def generate(run_dir: str, n: int) -> None:
    """Write a synthetic run with ``n`` records (runs in a child: its memory is not measured)."""
    import numpy as np
    import polars as pl
    import yaml

    from fmbench.records import REQUEST_SCHEMA

    rng = np.random.default_rng(0)
    sid = rng.integers(0, SHARDS, n)
    lat = rng.gamma(2.0, 0.5, n)
    t0 = rng.uniform(0, 3600, n)
    ttft = lat * rng.uniform(0.05, 0.3, n)
    out_tok = rng.integers(16, 512, n)
    conc = pl.Series([2 ** (i % 8) for i in range(SHARDS)])
    ok = rng.random(n) > 0.01
    df = pl.DataFrame({
        "experiment": pl.Series([f"e{(i // 2) % 4}" for i in range(SHARDS)]).gather(sid),
        "dataset": ["d"] * n, "bucket": pl.Series(["1-500", "500-1000"]).gather(sid % 2),
        "bucket_min": pl.Series([1, 500]).gather(sid % 2), "bucket_max": pl.Series([500, 1000]).gather(sid % 2),
        "concurrency": conc.gather(sid), "request_rate": [None] * n,
        "shard_id": pl.Series([f"s{i}" for i in range(SHARDS)]).gather(sid), "request_id": np.arange(n),
        "prompt_id": pl.Series([f"p{i}" for i in range(100)]).gather(rng.integers(0, 100, n)),
        "attempt": [1] * n, "warmup": rng.random(n) < 0.01, "ok": ok,
        "error_kind": pl.Series([None, "timeout"], dtype=pl.String).gather((~ok).astype(np.int64)),
        "error": [None] * n, "http_status": [200] * n,
        "input_tokens": rng.integers(1, 1000, n), "output_tokens": out_tok, "usage_source": ["server"] * n,
        "t_scheduled": t0, "t_start": t0, "t_first_token": t0 + ttft, "t_end": t0 + lat,
        "send_lag_s": np.zeros(n), "ttft_s": ttft, "latency_s": lat, "tpot_s": (lat - ttft) / (out_tok - 1),
        "itl_s": [[0.01, 0.012, 0.011]] * n, "chunks": out_tok, "resends": np.zeros(n, dtype=np.int64),
        "note": [None] * n, "text": [None] * n, "client_host": [None] * n, "cached_tokens": [None] * n,
    }, schema=REQUEST_SCHEMA)
    root = Path(run_dir)
    df.write_parquet(root / "requests.parquet")
    (root / "config.yml").write_text(yaml.safe_dump(CONFIG))
    shards = [{"shard_id": f"s{i}", "experiment": f"e{(i // 2) % 4}", "dataset": "d",
               "bucket": ["1-500", "500-1000"][i % 2], "concurrency": 2 ** (i % 8), "status": "ok",
               "valid": True, "requests": int((sid == i).sum()), "duration_s": 3600.0, "client_cpu_s": 10.0}
              for i in range(SHARDS)]
    (root / "manifest.json").write_text(json.dumps({"name": "scale", "run_id": "scale", "shards": shards}))


def _measure(kind: str, run_dir: str, q: Any) -> None:
    t0 = time.perf_counter()
    if kind == "metrics":
        import polars as pl

        from fmbench.config import parse_config
        from fmbench.metrics import summarize

        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
        summarize(pl.read_parquet(Path(run_dir) / "requests.parquet"), parse_config(CONFIG),
                  shards=manifest["shards"])
    else:
        from fmbench.report import render_report

        render_report(run_dir, png=kind == "report")
    q.put({"seconds": round(time.perf_counter() - t0, 3),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


def _child(kind: str, run_dir: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, run_dir, q))
    t0 = time.perf_counter()
    proc.start()
    deadline = time.monotonic() + 600
    while True:  # a child that died (an exception in it) ends the wait at once, not after 10 minutes
        try:
            res = q.get(timeout=1)
            break
        except queue.Empty:
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{kind} child ended without a result (exit {proc.exitcode})") from None
    proc.join()
    res["process_wall_s"] = round(time.perf_counter() - t0, 3)  # with interpreter start and imports
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure and write results/analysis_scale.json."""
    args = parser(__doc__).parse_args(argv)
    n = 200_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="fmbench-scale-") as run_dir:
        proc = mp.get_context("spawn").Process(target=generate, args=(run_dir, n))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"generating the run failed (exit {proc.exitcode})")
        la = loadavg()
        metrics = _child("metrics", run_dir)
        print(f"metrics over {n:,} records: {metrics['seconds']:.2f} s, peak RSS {metrics['peak_rss_mb']:.0f} MB "
              f"(load {la[0]})", flush=True)
        (Path(run_dir) / "metrics.parquet").unlink(missing_ok=True)
        report = _child("report", run_dir)
        print(f"report (metrics + figures + PNG + md/html) over {n:,} records: {report['seconds']:.2f} s, peak RSS "
              f"{report['peak_rss_mb']:.0f} MB", flush=True)
        (Path(run_dir) / "metrics.parquet").unlink(missing_ok=True)
        report_no_png = _child("report_no_png", run_dir)
        print(f"report without PNGs: {report_no_png['seconds']:.2f} s, peak RSS {report_no_png['peak_rss_mb']:.0f} MB "
              f"(load {loadavg()[0]})", flush=True)
    data = {"quick": args.quick, "records": n, "shards": SHARDS, "load_avg": la, "metrics": metrics,
            "report": report, "report_no_png": report_no_png, "target": "<= 5 s and <= 1.5 GB peak"}
    data["met_metrics"] = metrics["seconds"] <= 5 and metrics["peak_rss_mb"] <= 1536
    data["met_report"] = report["seconds"] <= 5 and report["peak_rss_mb"] <= 1536
    path = write_result(args.out, "analysis_scale", data)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
    sys.exit(0)
