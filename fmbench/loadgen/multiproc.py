"""Split one shard over several client processes: one timeline, one records file.

When one event loop cannot offer the load (one core saturated parsing streams), ``spec.processes
= N`` runs N spawned processes that share the shard exactly: closed loop, the ``concurrency``
workers are spread over the processes and take request ids from one shared counter, so exactly
``concurrency`` requests stay in flight across all of them; open loop, every process generates the
same seeded schedule and dispatches the ids ``i % N == k``. All processes start at one
coordinated ``t0`` (``time.monotonic()`` is one clock for every process on a host), so their
records share one timeline. Each process writes its own part file; the parent appends them into
the final records file (atomically renamed into place) and summarises the shard from it.

The client and ``count_tokens`` travel to the processes by pickle (an unopened `OpenAIClient`
does); the processes are spawned, so the calling program needs the usual ``__main__`` guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pickle
import queue
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fmbench.errors import ConfigError, FMBenchError, StorageError
from fmbench.loadgen.engine import (
    PROGRESS_EVERY_S,
    Progress,
    ShardCancelled,
    ShardStats,
    _closed_loop,
    _open_loop,
    _Shard,
    add_stamps,
    final_attempt_mask,
    first_sends,
    receive_stamps,
    report_progress,
    shard_result,
    shard_session,
    warm_up,
)
from fmbench.loadgen.heap import frozen_heap
from fmbench.loadgen.spec import ShardResult, ShardSpec
from fmbench.loadgen.writer import RecordWriter, open_records_file, partial_path
from fmbench.protocol import EndpointClient, Prompt

_READY_TIMEOUT_S = 120.0  # spawning and importing can be slow on a loaded machine
_START_LEAD_S = 0.05  # t0 is this far after the last process reported ready
_POLL_S = 0.2  # how often the parent checks for cancellation, and a child for its parent's death

__all__ = ["ShardCancelled", "run_shard_processes"]


def _workers(concurrency: int, n: int, k: int) -> int:
    return concurrency // n + (1 if k < concurrency % n else 0)


def part_path(path: str | Path, k: int) -> Path:
    """Records file of process ``k``."""
    p = Path(path)
    return p.with_name(f"{p.name}.part-{k}")


def _child(k: int, n: int, payload: bytes, counter: Any, msgs: Any, go: Any, out: str,
           progress_every_s: float | None = None) -> None:
    """One process's share of the shard (runs in a spawned process)."""
    _exit_with_parent()
    try:
        client, prompts, spec, count_tokens = pickle.loads(payload)

        def take_id() -> int:
            with counter.get_lock():
                i = int(counter.value)
                counter.value = i + 1
            return i

        async def main() -> tuple[list[float], float]:
            cpu0 = time.process_time()
            writer = RecordWriter(part_path(out, k))
            shard = _Shard(spec, prompts, writer, count_tokens)
            workers = 0 if spec.open_loop else _workers(spec.concurrency, n, k)
            async with shard_session(client, writer, workers) as session:
                if not spec.open_loop and spec.warmup:
                    # This process's share of the warm-ups, all done before any process measures
                    # (the parent starts the measured requests once every process is ready).
                    msgs.put(("warming", k))
                    await warm_up(client, shard, range(k, spec.warmup, n), workers)
                msgs.put(("ready", k))
                t0 = await asyncio.to_thread(go.get)
                if t0 is None:
                    raise asyncio.CancelledError
                if progress_every_s is not None:
                    session.reporter = asyncio.ensure_future(report_progress(
                        shard, lambda done, errors, ttft: msgs.put(("progress", k, done, errors, ttft)), progress_every_s))
                if spec.open_loop:
                    await _open_loop(client, shard, t0, (k, n))
                else:
                    await _closed_loop(client, shard, workers, take_id, t0)
            writer.commit()
            return list(shard.stats.dispatch_lags), time.process_time() - cpu0

        with frozen_heap():  # the garbage collector's pauses stay out of the requests' times
            lags, cpu = asyncio.run(main())
        msgs.put(("done", k, lags, cpu, receive_stamps(client)))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which raises it as one line)
        msgs.put(("error", k, f"{type(exc).__name__}: {exc}"))


def _exit_with_parent() -> None:
    """Exit this child when its parent dies (a killed parent never terminates its children)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="fmbench-parent-watch").start()


def run_shard_processes(
    client: EndpointClient,
    prompts: list[Prompt],
    spec: ShardSpec,
    out_path: str | Path,
    count_tokens: Callable[[str], int],
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> ShardResult:
    """Run a shard over ``spec.processes`` processes; same contract as `fmbench.loadgen.run_shard`.

    ``stop`` (set from another thread, e.g. when the calling coroutine is cancelled) stops the
    processes: they are told to stop, then terminated after a grace period, and
    `ShardCancelled` is raised; the records file is not written.

    Raises:
        ShardCancelled: ``stop`` was set.
        ConfigError: the client or ``count_tokens`` cannot be sent to another process.
        FMBenchError: a process failed (its error in the message).
        StorageError: the records cannot be merged.
    """
    import multiprocessing as mp

    n = spec.processes
    try:
        payload = pickle.dumps((client, prompts, spec, count_tokens))
    except Exception as exc:  # pickle raises many types
        raise ConfigError(
            f"shard {spec.shard_id}: processes={n} needs a picklable client and count_tokens ({exc})"
        ) from exc
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0 if spec.open_loop else spec.warmup)  # closed loop: the measured ids
    msgs = ctx.Queue()
    gos = [ctx.Queue() for _ in range(n)]
    out = str(out_path)
    cpu0 = time.process_time()
    procs = [
        ctx.Process(target=_child, args=(k, n, payload, counter, msgs, gos[k], out,
                                         PROGRESS_EVERY_S if progress is not None else None), daemon=True)
        for k in range(n)
    ]
    for proc in procs:
        proc.start()
    try:
        _await(msgs, "ready", n, spec, stop)
        t0 = time.monotonic() + _START_LEAD_S
        for go in gos:
            go.put(t0)
        done = _await(msgs, "done", n, spec, stop, _ProgressSum(n, spec, progress) if progress else None)
    except BaseException:
        for go in gos:
            go.put(None)  # not yet started: exit at once
        deadline = time.monotonic() + (0.5 if stop is not None and stop.is_set() else 5.0)
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for k in range(n):
            part_path(out, k).unlink(missing_ok=True)
            partial_path(part_path(out, k)).unlink(missing_ok=True)
        raise
    for proc in procs:
        proc.join(30)
    stats = _merge(out, n)
    for msg in done:
        stats.dispatch_lags.extend(msg[2])
    cpu = time.process_time() - cpu0 + sum(msg[3] for msg in done)
    return shard_result(spec, stats, Path(out), cpu, add_stamps([msg[4] for msg in done]))


class _ProgressSum:
    """Adds up the processes' progress messages and reports the sum once per round of them."""

    def __init__(self, n: int, spec: ShardSpec, progress: Progress) -> None:
        self.latest: dict[int, tuple[int, int, float | None]] = {}
        self.round: set[int] = set()  # processes heard from since the last report
        self.n, self.total, self.progress = n, spec.warmup + spec.requests, progress

    def update(self, k: int, done: int, errors: int, ttft: float | None) -> None:
        self.latest[k] = (done, errors, ttft)
        self.round.add(k)
        if len(self.round) == self.n:
            self.round.clear()
            report_sum(self.progress, self.total, self.latest)


def report_sum(progress: Progress, total: int, latest: dict[int, tuple[int, int, float | None]]) -> None:
    """Report the parts' latest ``(done, errors, ttft_p50_s)`` (processes of a shard, or its client hosts'
    slices) as one: their sums, and the median of their medians, close enough for a progress display."""
    ttfts = [t for _, _, t in latest.values() if t is not None]
    progress(sum(d for d, _, _ in latest.values()), total, sum(e for _, e, _ in latest.values()),
             statistics.median(ttfts) if ttfts else None)


def _await(msgs: Any, kind: str, n: int, spec: ShardSpec, stop: threading.Event | None,
           progress: _ProgressSum | None = None) -> list[tuple[Any, ...]]:
    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + _READY_TIMEOUT_S if kind == "ready" else math.inf
    warming: set[int] = set()  # processes sending their warm-ups: started, and bounded by the requests' timeouts
    while len(got) < n:
        if stop is not None and stop.is_set():
            raise ShardCancelled(f"shard {spec.shard_id}: cancelled, client processes stopped")
        try:
            msg = msgs.get(timeout=_POLL_S)
        except queue.Empty as exc:
            if time.monotonic() > deadline and len(warming | {m[1] for m in got}) < n:
                raise FMBenchError(
                    f"shard {spec.shard_id}: client processes not ready in {_READY_TIMEOUT_S:g} s"
                ) from exc
            continue
        if msg[0] == "error":
            raise FMBenchError(f"shard {spec.shard_id}: client process {msg[1]} failed: {msg[2]}")
        if msg[0] == "warming":
            warming.add(msg[1])
            continue
        if msg[0] == "progress":
            if progress is not None:
                progress.update(msg[1], msg[2], msg[3], msg[4])
            continue
        got.append(msg)
    return got


def _merge(out: str, n: int) -> ShardStats:
    """Append the part files into ``out`` (atomically) and rebuild the statistics from them."""
    final = Path(out)
    tmp = partial_path(final)
    stats = ShardStats()
    try:
        writer = open_records_file(tmp)
        with contextlib.closing(writer):
            for k in range(n):
                pf = pq.ParquetFile(part_path(out, k))
                # (a request's attempts are all in its process's part)
                ids = pf.read(columns=["request_id", "attempt", "t_start"]).to_pydict()
                last = final_attempt_mask(ids["request_id"], ids["attempt"])
                sent = first_sends(ids["request_id"], ids["t_start"])
                row = 0
                for rg in range(pf.num_row_groups):
                    table = pf.read_row_group(rg)
                    writer.write_table(table)
                    stats.observe_records(table, last[row:row + table.num_rows], sent[row:row + table.num_rows])
                    row += table.num_rows
        os.replace(tmp, final)
        for k in range(n):
            part_path(out, k).unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"{out}: cannot merge the client processes' records: {exc}") from exc
    return stats
