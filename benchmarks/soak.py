"""Soak: a long closed-loop run against the simulated endpoint with every fault kind injected.

Checks what a short test cannot: over many minutes at high concurrency, every scheduled request
still has exactly one record (and the server's own fault counts match the records' error kinds),
the load generator's memory stays flat and no file descriptor leaks.

The client (this process) runs back-to-back shards of ``--shard-requests`` requests at
``--concurrency`` (one `OpenAIClient` opened and closed per shard, as a benchmark does) until
``--minutes`` have passed; the server is a `SimulatedServerProcess` whose fault rates add up to
``--fault-rate``, split equally over the eight kinds (500, 503, 429, hang, reset, malformed,
truncated, slow first byte). A sampler thread records, every ``--sample-s`` seconds, this process's
RSS, its peak RSS so far, its open file descriptors (``/proc/self/fd``), the server's RSS and the
records written so far.

Verdicts: ``accounted`` (every shard: records == scheduled requests, unique ids, and each error
kind equal to the server's injected count -- except that requests slowed past the client timeout
by an overloaded host may add timeouts; ``kinds_match_server`` says whether they were exactly
equal, ``timeouts_beyond_hangs`` how many were added), ``memory_flat`` (RSS at the end within 10 % + 16 MiB of the RSS
after the first minute) and ``fd_flat`` (open fds between shards never above the first shard's
level + 8).

Run: ``uv run --no-sync python benchmarks/soak.py [--minutes 10] [--concurrency 128]``; the result
goes to ``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import polars as pl
import psutil

from fmbench.config import InferenceConfig, SimulatedEndpoint
from fmbench.endpoints import make_client
from fmbench.loadgen import ShardSpec, run_shard
from fmbench.protocol import Prompt
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.process import SimulatedServerProcess

#: How the OpenAI client classifies each injected fault (None: the request succeeds).
EXPECTED_KIND: dict[str, str | None] = {
    "none": None, "http_500": "server_error", "http_503": "server_error", "throttle": "throttled",
    "hang": "timeout", "reset": "connection", "malformed": "protocol", "truncated": "protocol",
    "slow_first_byte": None,
}
MiB = 1024 * 1024


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Sampler(threading.Thread):
    """Samples memory and file descriptors every ``period`` seconds."""

    def __init__(self, period: float, server_pid: int | None, progress: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.period, self.progress = period, progress
        self.server = psutil.Process(server_pid) if server_pid else None
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def sample(self) -> dict[str, Any]:
        me = psutil.Process()
        s = {
            "t_s": round(time.monotonic() - self.t0, 1),
            "rss_mib": round(me.memory_info().rss / MiB, 1),
            "peak_rss_mib": round(_peak_rss() / MiB, 1),
            "open_fds": _fds(),
            "server_rss_mib": round(self.server.memory_info().rss / MiB, 1) if self.server else None,
            "records": self.progress["records"],
            "shards": self.progress["shards"],
        }
        self.samples.append(s)
        print(json.dumps(s), flush=True)
        return s

    def run(self) -> None:
        while not self._halt.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._halt.set()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--fault-rate", type=float, default=0.05, help="total fault rate, split over 8 kinds")
    ap.add_argument("--shard-requests", type=int, default=20_000)
    ap.add_argument("--timeout-s", type=float, default=3.0, help="per-request timeout (hung requests)")
    ap.add_argument("--sample-s", type=float, default=60.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.json"))
    args = ap.parse_args()

    each = args.fault_rate / 8
    faults = FaultConfig(seed=42, http_500_rate=each, http_503_rate=each, throttle_rate=each, retry_after_s=1,
                         hang_rate=each, reset_rate=each, malformed_rate=each, truncated_rate=each,
                         slow_first_byte_rate=each, slow_first_byte_s=0.5)
    sim = SimulatedEndpoint(provider="simulated", model="fmbench-sim", ttft_ms=30, tpot_ms=2, output_tokens=16,
                            max_batch=256, seed=1)
    prompts = [Prompt(f"p{i}", f"soak prompt {i} " + "word " * (i % 50), 4 + i % 50) for i in range(256)]
    inference = InferenceConfig(max_tokens=16, timeout_s=args.timeout_s)
    progress = {"records": 0, "shards": 0}
    shards: list[dict[str, Any]] = []
    fds_between: list[int] = []
    deadline = time.monotonic() + args.minutes * 60
    with SimulatedServerProcess(sim, faults=faults) as server, tempfile.TemporaryDirectory() as tmp:
        assert server.url
        sampler = Sampler(args.sample_s, server.pid, progress)
        first = sampler.sample()
        sampler.start()
        before = Counter[str]()
        k = 0
        while time.monotonic() < deadline:
            spec = ShardSpec(shard_id=f"soak{k}", experiment="soak", dataset="d", bucket="1-100", bucket_min=1,
                             bucket_max=100, concurrency=args.concurrency, requests=args.shard_requests)
            out = Path(tmp) / f"soak{k}.parquet"
            t0 = time.monotonic()
            result = run_shard(make_client(sim, inference, url=server.url), prompts, spec, out,
                               lambda text: len(text.split()))
            wall = time.monotonic() - t0
            records = pl.read_parquet(out, columns=["request_id", "ok", "error_kind"])
            stats = httpx.get(f"{server.url}/fmbench/stats", timeout=30).json()["faults"]
            now = Counter({kk: int(v) for kk, v in stats.items()})
            injected = now - before
            before = now
            expected: Counter[str] = Counter()
            for kind, n in injected.items():
                expected[EXPECTED_KIND[kind] or "ok"] += n
            got = Counter(kind or "ok" for kind in records["error_kind"].to_list())
            ids_ok = records["request_id"].n_unique() == records.height == args.shard_requests
            # Exact for every kind but timeouts: on an overloaded host a slow (not hung) request can
            # also pass the client timeout, turning an "ok" into a "timeout" -- never the reverse.
            exact = all(got[k] == expected[k] for k in set(got) | set(expected) if k not in ("ok", "timeout"))
            extra_timeouts = got["timeout"] - expected["timeout"]
            kinds_ok = exact and extra_timeouts >= 0 and got["ok"] + got["timeout"] == expected["ok"] + expected["timeout"]
            shards.append({
                "shard": k, "requests": args.shard_requests, "records": records.height, "unique_ids": ids_ok,
                "errors": result.errors, "wall_s": round(wall, 1), "req_per_s": round(records.height / wall, 1),
                "injected": dict(sorted(injected.items())), "error_kinds": dict(sorted(got.items())),
                "kinds_match_server": got == expected, "kinds_consistent": kinds_ok,
                "timeouts_beyond_hangs": extra_timeouts,
            })
            print(json.dumps(shards[-1]), flush=True)
            out.unlink()
            progress["records"] += records.height
            progress["shards"] += 1
            fds_between.append(_fds())
            k += 1
        sampler.stop()
        sampler.join()
        last = sampler.sample()
    after_minute = next((s for s in sampler.samples if s["t_s"] >= 60), first)
    memory_flat = last["rss_mib"] <= after_minute["rss_mib"] * 1.10 + 16
    fd_flat = bool(fds_between) and max(fds_between) <= fds_between[0] + 8
    accounted = bool(shards) and all(s["records"] == s["requests"] and s["unique_ids"] and s["kinds_consistent"]
                                     for s in shards)
    result_doc = {
        "what": "closed-loop soak against the simulated endpoint with every fault kind injected",
        "command": "uv run --no-sync python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "params": {**vars(args), "fault_rate_each_kind": each, "endpoint": sim.model_dump(exclude={"faults"})},
        "verdict": {"accounted": accounted, "memory_flat": memory_flat, "fd_flat": fd_flat},
        "totals": {"shards": len(shards), "records": sum(s["records"] for s in shards),
                   "scheduled": sum(s["requests"] for s in shards),
                   "errors": sum(s["errors"] for s in shards)},
        "samples": sampler.samples,
        "fds_between_shards": fds_between,
        "shards": shards,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result_doc, indent=1) + "\n")
    print(json.dumps(result_doc["verdict"]), flush=True)
    return 0 if accounted and memory_flat and fd_flat else 1


if __name__ == "__main__":
    sys.exit(main())
