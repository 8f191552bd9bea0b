"""Simulator capacity (issue 17, item 3): paced streams per core at 4 ms per token, and pacing error.

The simulated endpoint runs in its own process with each decode path (``--writer per-stream``, one
coroutine wake and write per chunk, the path before issue 17; ``--writer batched``, one decode
step writes every active stream's next chunk). A closed loop of ``concurrency`` streaming requests
(TTFT 80 ms, 4 ms per token, 250 tokens) reads the bytes without decoding them, so the client
stays cheap. Per path, from one measured window after a warm-up:

* paced streams per core = chunks sent per second x 4 ms / server CPU seconds per second
  (``/proc/PID/stat``): how many 4-ms streams one fully used core would carry;
* pacing error = the server's own chunk stamps against its schedule (``t_sent - t_due``, from
  ``/fmbench/stats``), p50/p99/max.

The ratio of the two paths is measured in one run, on one machine state. Target: batched >= 4x
per-stream streams per core, pacing error p99 <= 1 ms at concurrency 128.

Beside them, two floors. ``bare-loop``: a plain Python loop, no HTTP, asyncio or latency model,
that every 0.2-ms step takes a stamp and ``send``s one chunk-sized frame to each stream due in it,
over loopback TCP to a reader process. Its CPU per chunk is the least any CPython server can spend
with one socket write per stream per step, so per-stream / bare-loop bounds the reachable ratio.
Its system time per chunk is the kernel's part of pacing chunks out: the TCP sends, their delivery
to the reader (over loopback the sender's call runs it) and the wake-ups of the 0.2-ms steps, which
no paced server in any language avoids: the 4x target's CPU per chunk minus that is what is left
for everything a server does in user space.
``asyncio-loop``: the same work the way the simulator does it (a timerfd wake of the asyncio loop
per step, ``transport.write``), so the gap between the two is the event loop's share.

Run: ``uv run --no-sync python -m benchmarks.sim_capacity [--quick]``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp

from benchmarks._common import loadavg, parser, write_result
from fmbench.config import SimulatedEndpoint
from fmbench.machine import Sentinel, attribute
from fmbench.simulator.process import SimulatedServerProcess

TPOT_MS = 4.0
STEP_S = 0.0002  # the batched writer's decode step (fmbench.simulator.app._BATCHED_STEP_S)
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _own_cpu_s() -> tuple[float, float]:
    """User and system (kernel) CPU seconds of this process."""
    t = os.times()
    return t.user, t.system


def _per_chunk(cpu0: tuple[float, float], cpu1: tuple[float, float], sent: int) -> dict[str, float]:
    """CPU per chunk between two `_cpu_s` readings: in all, and the kernel's part (system time: the
    sends, their delivery to the reader, which over loopback the sender's call runs, the wake-ups,
    and for a server its reads of the requests)."""
    user, kernel = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    n = max(sent, 1)
    return {"server_cpu_us_per_chunk": round((user + kernel) / n * 1e6, 2),
            "server_kernel_us_per_chunk": round(kernel / n * 1e6, 2)}


async def _drive(url: str, model: str, concurrency: int, warmup_s: float, window_s: float,
                 pid: int) -> dict[str, Any]:
    chunks = errors = 0
    measuring = False
    stop = False
    body = {"model": model, "stream": True, "prompt": "capacity"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(i: int) -> None:
            nonlocal chunks, errors
            n = 0
            while not stop:
                try:
                    async with session.post(f"{url}/v1/completions",
                                            json={**body, "prompt": f"capacity {i} {n}"}) as resp:
                        async for data in resp.content.iter_any():
                            if measuring:
                                chunks += data.count(b"data: {")
                except aiohttp.ClientError:
                    errors += 1
                n += 1

        # Started before the load, so its own start-up is not in the window.
        sentinel = Sentinel(warmup_s + window_s + 1.0)
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup_s)
        async with session.post(f"{url}/fmbench/stats/reset") as r:
            await r.read()
        measuring = True
        cpu0, t0, c0 = _cpu_s(pid), time.monotonic(), time.process_time()
        await asyncio.sleep(window_s)
        cpu1, t1, c1 = _cpu_s(pid), time.monotonic(), time.process_time()
        measuring = False
        sent = chunks
        async with session.get(f"{url}/fmbench/stats", params={"late": "1"}) as r:
            stats = await r.json()
        stop = True
        await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()
    machine = await asyncio.to_thread(sentinel.result)
    late_chunks = [c for c in stats["late_chunks"] if t0 <= c[0] <= t1]
    where = attribute(late_chunks, sent, (t0, t1), machine["windows"])
    wall = t1 - t0
    cores = (sum(cpu1) - sum(cpu0)) / wall
    chunks_s = sent / wall
    late = stats["lateness"]
    return {
        "chunks_s": round(chunks_s),
        "server_cpu_cores": round(cores, 3),
        "client_cpu_cores": round((c1 - c0) / wall, 3),
        **_per_chunk(cpu0, cpu1, sent),
        "paced_streams": round(chunks_s * TPOT_MS / 1000, 1),
        "streams_per_core": round(chunks_s * TPOT_MS / 1000 / cores, 1) if cores > 0 else None,
        "pacing_p50_ms": round(late["p50_ms"], 3),
        "pacing_p99_ms": round(late["p99_ms"], 3),
        "pacing_max_ms": round(late["max_ms"], 3),
        "pacing_chunks": late["n"],
        "errors": errors,
        # Whose lateness: the machine's slow windows (see fmbench/machine.py) and the
        # chunks more than 1 ms late in and outside them.
        "machine_unit_us_median": machine["unit_us_median"],
        "machine_slow_share": machine["slow_share"],
        **where,
        "load_avg": loadavg(),
    }


_READER = """
import select, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
poll = select.epoll()
for s in socks:
    poll.register(s.fileno(), select.EPOLLIN)
by_fd = {s.fileno(): s for s in socks}
while by_fd:
    for fd, _ in poll.poll():
        if not by_fd[fd].recv(65536):
            poll.unregister(fd)
            del by_fd[fd]
"""


def measure_floor(concurrency: int, warmup_s: float, window_s: float) -> dict[str, Any]:
    """The bare-loop floor: CPU per paced chunk of a plain Python sender (see the module docstring)."""
    frame = b"14a\r\n" + b"x" * 330 + b"\r\n"  # the size of a completion chunk, with its framing
    listener = socket.create_server(("127.0.0.1", 0), backlog=concurrency)
    port = listener.getsockname()[1]
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(port), str(concurrency)])
    try:
        socks = [listener.accept()[0] for _ in range(concurrency)]
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        per_step = concurrency * STEP_S / (TPOT_MS / 1000)  # streams due per step, on average
        due = owed = 0.0
        i = sent = 0
        t = time.monotonic()
        start, end = t + warmup_s, t + warmup_s + window_s
        cpu0 = None
        while t < end:
            if cpu0 is None and t >= start:
                cpu0, sent = _own_cpu_s(), 0
            owed += per_step
            while owed >= 1.0:
                time.monotonic()  # the stamp a server takes per write
                socks[i].send(frame)
                i, sent, owed = (i + 1) % concurrency, sent + 1, owed - 1.0
            due = max(due + STEP_S, t)
            time.sleep(max(0.0, due - time.monotonic()))
            t = time.monotonic()
        cpu1 = _own_cpu_s()
        for s in socks:
            s.close()
    finally:
        listener.close()
        reader.wait(timeout=10)
    cpu = _per_chunk(cpu0 or cpu1, cpu1, sent)
    return {"writer": "bare-loop", "concurrency": concurrency, "chunks_s": round(sent / window_s), **cpu,
            "streams_per_core": round(TPOT_MS * 1000 / cpu["server_cpu_us_per_chunk"], 1), "load_avg": loadavg()}


async def _asyncio_floor(concurrency: int, warmup_s: float, window_s: float) -> tuple[dict[str, float], int]:
    from fmbench.simulator.pacing import TimerFdTimer

    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Sink, "127.0.0.1", 0, backlog=concurrency)
    port = server.sockets[0].getsockname()[1]
    reader = await asyncio.create_subprocess_exec(sys.executable, "-c", _READER, str(port), str(concurrency))
    try:
        while len(transports) < concurrency:
            await asyncio.sleep(0.01)
        per_step = concurrency * STEP_S / (TPOT_MS / 1000)
        frame = b"14a\r\n" + b"x" * 330 + b"\r\n"
        st: dict[str, Any] = {"owed": 0.0, "i": 0, "sent": 0, "due": time.monotonic(), "cpu0": None}
        start = time.monotonic()
        done: asyncio.Future[dict[str, float]] = loop.create_future()

        def step() -> None:
            now = time.monotonic()
            if st["cpu0"] is None and now >= start + warmup_s:
                st["cpu0"], st["sent"] = _own_cpu_s(), 0
            if now >= start + warmup_s + window_s:
                done.set_result(_per_chunk(st["cpu0"], _own_cpu_s(), st["sent"]))
                return
            st["owed"] += per_step
            while st["owed"] >= 1.0:
                time.monotonic()
                transports[st["i"]].write(frame)
                st["i"], st["sent"], st["owed"] = (st["i"] + 1) % concurrency, st["sent"] + 1, st["owed"] - 1.0
            st["due"] = max(st["due"] + STEP_S, now)
            timer.set(st["due"])

        timer = TimerFdTimer(loop, step)
        timer.set(time.monotonic())
        cpu = await done
        timer.close()
        return cpu, st["sent"]
    finally:
        for t in transports:
            t.close()
        server.close()
        await asyncio.wait_for(reader.wait(), timeout=10)


def measure_asyncio_floor(concurrency: int, warmup_s: float, window_s: float) -> dict[str, Any]:
    """The asyncio-loop floor: the bare loop's work through a timerfd wake and ``transport.write``."""
    cpu, sent = asyncio.run(_asyncio_floor(concurrency, warmup_s, window_s))
    return {"writer": "asyncio-loop", "concurrency": concurrency, "chunks_s": round(sent / window_s), **cpu,
            "streams_per_core": round(TPOT_MS * 1000 / cpu["server_cpu_us_per_chunk"], 1), "load_avg": loadavg()}


def measure(writer: str | None, concurrency: int, warmup_s: float, window_s: float,
            output_tokens: int) -> dict[str, Any]:
    """One decode path at one concurrency, in a fresh server process."""
    cfg = SimulatedEndpoint(provider="simulated", ttft_ms=80.0, tpot_ms=TPOT_MS, output_tokens=output_tokens,
                            max_batch=concurrency)
    extra = ["--writer", writer] if writer else []
    with SimulatedServerProcess(cfg, extra_args=extra) as server:
        assert server.url is not None and server.pid is not None
        row = asyncio.run(_drive(server.url, cfg.model, concurrency, warmup_s, window_s, server.pid))
    return {"writer": writer or "default", "concurrency": concurrency, **row}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--writers", nargs="+", default=["per-stream", "batched"],
                   help="Decode paths to compare (the first is the baseline, the last the candidate).")
    p.add_argument("--concurrency", type=int, nargs="+", default=[32, 128],
                   help="Concurrency levels; the target is judged at the last.")
    p.add_argument("--output-tokens", type=int, default=None)
    p.add_argument("--no-floor", action="store_true", help="Skip the asyncio-loop and bare-loop floors.")
    args = p.parse_args(argv)
    warmup, window, tokens = (1.0, 2.0, 100) if args.quick else (2.0, 6.0, 250)
    tokens = args.output_tokens or tokens
    rows = []
    for level in args.concurrency:
        for writer in args.writers:  # adjacent in time, so both see the same machine load
            row = measure(None if writer == "default" else writer, level, warmup, window, tokens)
            print(row, flush=True)
            rows.append(row)
        if not args.no_floor:
            for floor_row in (measure_asyncio_floor(level, warmup, window), measure_floor(level, warmup, window)):
                print(floor_row, flush=True)
                rows.append(floor_row)
    ratios, ceilings, budgets = {}, {}, {}
    for level in args.concurrency:
        by = {r["writer"]: r for r in rows if r["concurrency"] == level}
        base, best = by.get(args.writers[0]), by.get(args.writers[-1])
        if base and best and base["streams_per_core"] and best["streams_per_core"]:
            ratios[str(level)] = round(best["streams_per_core"] / base["streams_per_core"], 2)
        floor = by.get("bare-loop")
        if base and floor:  # the most any Python writer could gain over the baseline
            ceilings[str(level)] = round(base["server_cpu_us_per_chunk"] / floor["server_cpu_us_per_chunk"], 2)
            # What a 4x writer may spend per chunk, and how much of it the kernel already takes to pace
            # a chunk out (the bare loop's system time): the rest is all user space may have.
            allowed = base["server_cpu_us_per_chunk"] / 4
            kernel, user = floor["server_kernel_us_per_chunk"], floor["server_cpu_us_per_chunk"] - floor[
                "server_kernel_us_per_chunk"]
            budgets[str(level)] = {"allowed_us": round(allowed, 2), "kernel_us": kernel,
                                   "left_for_user_space_us": round(allowed - kernel, 2),
                                   "bare_loop_user_us": round(user, 2),
                                   "kernel_ceiling_ratio": round(base["server_cpu_us_per_chunk"] / kernel, 2)
                                   if kernel > 0 else None}
    top = args.concurrency[-1]
    best = next(r for r in rows if r["concurrency"] == top and r["writer"] == args.writers[-1])
    ratio = ratios.get(str(top))
    data = {
        "target": f"{args.writers[-1]} >= 4x {args.writers[0]} paced streams per core at 4 ms/token; "
                  f"pacing error p99 <= 1 ms at concurrency {top}",
        "tpot_ms": TPOT_MS, "output_tokens": tokens, "window_s": window, "rows": rows,
        "streams_per_core_ratio": ratios,
        "bare_loop_ceiling_ratio": ceilings,
        "target_budget": budgets,
        "met_ratio": bool(ratio and ratio >= 4.0),
        "met_pacing": best["pacing_p99_ms"] <= 1.0,
    }
    data["met"] = data["met_ratio"] and data["met_pacing"]
    print(f"streams per core {args.writers[-1]} / {args.writers[0]} by concurrency: {ratios}; pacing p99 at "
          f"{top}: {best['pacing_p99_ms']} ms; met: {data['met']}; bare-loop ceiling: {ceilings}", flush=True)
    write_result(args.out, "sim_capacity", data)


if __name__ == "__main__":
    main()
