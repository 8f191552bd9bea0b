"""Benchmark 8, client hosts: offered load of one shard from 1 vs 2 Dask client hosts, as a ratio.

A local Dask cluster (``dask scheduler`` and two ``dask worker`` processes, one thread each) and the
zero-latency server (`fmbench.simulator.zeroserver`) in its own process. The same closed-loop shard
(concurrency 64, JSON answers) runs through `fmbench.loadgen.hosts.run_shard_hosts` with
``hosts=1`` and ``hosts=2``, alternating (best of the rounds, as the machine is shared); the result
is each one's requests/s and their ratio. On one machine the two hosts share its cores with the
server, so the ratio says how much of a second host's capacity reaches the endpoint here, and is
a lower bound for two real machines.

Run: ``uv run --no-sync python -m benchmarks.client_hosts [--quick]``.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import loadavg, parser, write_result
from fmbench.config import InferenceConfig
from fmbench.endpoints.openai import OpenAIClient
from fmbench.loadgen import ShardSpec
from fmbench.loadgen.hosts import run_shard_hosts
from fmbench.protocol import Prompt
from fmbench.simulator.zeroserver import ZeroServer

PROMPTS = [Prompt(f"p{i}", f"prompt {i}", 3) for i in range(8)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster() -> tuple[str, list[subprocess.Popen[bytes]]]:
    dask = str(Path(sys.executable).with_name("dask"))
    address = f"tcp://127.0.0.1:{_port()}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for name in ("host-1", "host-2"):
        procs.append(subprocess.Popen([dask, "worker", address, "--name", name, "--nthreads", "1", "--host",
                                       "127.0.0.1", "--no-nanny", "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return address, procs


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    import distributed

    requests, rounds = (1500, 2) if args.quick else (6000, 3)
    address, procs = _cluster()
    try:
        client = distributed.Client(address, timeout=60)
        client.wait_for_workers(2, timeout=120)
        best: dict[int, dict[str, Any]] = {}
        with ZeroServer() as srv, tempfile.TemporaryDirectory(prefix="fmbench-bench-hosts-") as tmp:
            for r in range(rounds):
                for hosts in (1, 2):
                    spec = ShardSpec(shard_id=f"b{hosts}-{r}", experiment="e", dataset="d", bucket="0-9",
                                     bucket_min=0, bucket_max=9, concurrency=64, requests=requests, warmup=64)
                    ep = OpenAIClient(srv.base_url(None), "m", inference=InferenceConfig(stream=False))
                    result, clocks = run_shard_hosts(ep, PROMPTS, spec, Path(tmp) / f"{spec.shard_id}.parquet", len,
                                                     hosts, client, lambda k, s=spec: f"{tmp}/{s.shard_id}.{k}.parquet")
                    row = {"hosts": hosts, "req_s": round(result.achieved_rate, 1), "errors": result.errors,
                           "requests": result.requests, "per_host": [c.requests for c in clocks],
                           "clock_uncertainty_ms": [round(c.uncertainty_s * 1e3, 3) for c in clocks],
                           "load_avg": loadavg()}
                    print(row, flush=True)
                    if hosts not in best or row["req_s"] > best[hosts]["req_s"]:
                        best[hosts] = row
        client.close()
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
    ratio = best[2]["req_s"] / best[1]["req_s"] if best[1]["req_s"] else float("nan")
    write_result(args.out, "client_hosts", {"one_host": best[1], "two_hosts": best[2], "ratio": round(ratio, 3),
                                            "concurrency": 64, "requests": requests, "rounds": rounds})
    print(f"1 host {best[1]['req_s']:,.0f} req/s, 2 hosts {best[2]['req_s']:,.0f} req/s, ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
