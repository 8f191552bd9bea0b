"""Measure how precisely the simulated endpoint paces its chunks, at given concurrency levels.

Starts the server in its own process, drives closed-loop streaming requests from this one, and
reports the server-side lateness of each chunk (send time minus due time, from
``/fmbench/stats``) next to the client-side delivery delay (arrival minus the chunk's
``t_sent``), so server precision and client overhead can be told apart::

    python -m fmbench.simulator.measure --concurrency 1 16 64 --tpot-ms 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from typing import Any

import aiohttp

from fmbench.config import SimulatedEndpoint
from fmbench.simulator.process import SimulatedServerProcess


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else float("nan")
    )


async def _drive(url: str, model: str, concurrency: int, requests: int) -> tuple[dict[str, Any], list[float]]:
    delays: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await session.post(f"{url}/fmbench/stats/reset")
        counter = iter(range(requests))

        async def worker() -> None:
            for i in counter:
                body = {"model": model, "stream": True, "prompt": f"measure {i}"}
                async with session.post(f"{url}/v1/completions", json=body) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data: {"):
                            now = time.monotonic()
                            delays.append(now - json.loads(line[6:])["fmbench"]["t_sent"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        async with session.get(f"{url}/fmbench/stats") as resp:
            stats = await resp.json()
    return stats["lateness"], delays


def measure_pacing(cfg: SimulatedEndpoint, concurrency: int, requests: int) -> dict[str, float | int]:
    """Pacing precision of a fresh server process at one concurrency level.

    Returns:
        ``server_p50_ms``/``server_p99_ms``/``server_max_ms`` (chunk send minus due time),
        ``client_p50_ms``/``client_p99_ms`` (chunk arrival here minus its send time), ``chunks``.
    """
    with SimulatedServerProcess(cfg) as server:
        assert server.url is not None
        lateness, delays = asyncio.run(_drive(server.url, cfg.model, concurrency, requests))
    return {
        "concurrency": concurrency,
        "chunks": lateness["n"],
        "server_p50_ms": lateness["p50_ms"],
        "server_p99_ms": lateness["p99_ms"],
        "server_max_ms": lateness["max_ms"],
        "client_p50_ms": _pct(delays, 0.5) * 1000,
        "client_p99_ms": _pct(delays, 0.99) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    """Print one line of pacing precision per concurrency level."""
    parser = argparse.ArgumentParser(
        prog="python -m fmbench.simulator.measure", description=__doc__
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--requests-per-stream", type=int, default=4, help="Requests per concurrent stream.")
    parser.add_argument("--ttft-ms", type=float, default=80.0)
    parser.add_argument("--tpot-ms", type=float, default=4.0)
    parser.add_argument("--output-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    for level in args.concurrency:
        cfg = SimulatedEndpoint(
            provider="simulated",
            ttft_ms=args.ttft_ms,
            tpot_ms=args.tpot_ms,
            output_tokens=args.output_tokens,
            max_batch=max(level, 1),
        )
        r = measure_pacing(cfg, level, max(level * args.requests_per_stream, 8))
        print(
            f"concurrency {level:4d}: {r['chunks']:6d} chunks | server lateness p50 {r['server_p50_ms']:.3f} "
            f"p99 {r['server_p99_ms']:.3f} max {r['server_max_ms']:.2f} ms | client delivery p50 "
            f"{r['client_p50_ms']:.3f} p99 {r['client_p99_ms']:.3f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
