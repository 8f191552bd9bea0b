"""Split one shard over several client hosts of a Dask cluster: one shard, one records file.

When one machine cannot offer the load, ``client_hosts = N`` runs the shard as N slices on N
different Dask workers at once. Closed loop: the ``concurrency`` workers are spread over the hosts
and the request ids are dealt to them in proportion (so ``concurrency`` requests stay in flight
across all of them); open loop: every host generates the same seeded schedule and dispatches the
ids ``i % N == k`` (a rate split). Each slice measures its clock against the scheduler's
(NTP-style, the best of a few round trips), reports ready, and starts at one agreed instant of the
scheduler's clock. Latencies stay on each host's monotonic clock; the merged records put every
host's ``t_*`` stamps on the first host's timeline through the measured offsets, and the shard is
invalid when the offsets are too uncertain for its duration. Each slice writes its records
straight to the run's storage (never through the scheduler); the caller merges them.

``distributed`` is optional: this module imports it only when a shard runs across hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import pickle
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from fmbench import storage
from fmbench.errors import ConfigError, FMBenchError, StorageError
from fmbench.interrupts import StopScope
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
    receive_stamps,
    report_progress,
    shard_result,
    shard_session,
    warm_up,
)
from fmbench.loadgen.multiproc import report_sum
from fmbench.loadgen.spec import ShardResult, ShardSpec
from fmbench.loadgen.writer import ARROW_SCHEMA, RecordWriter, open_records_file, partial_path
from fmbench.protocol import EndpointClient, Prompt

log = logging.getLogger("fmbench")

_READY_TIMEOUT_S = 180.0  # a slice may calibrate its host first (a few seconds on a loaded machine)
_START_LEAD_S = 1.0  # the agreed start is this far after the last slice reported ready
_WARM_UP_TIMEOUT_S = 300.0  # a warm-up request's timeout when the client does not say its own
_POLL_S = 0.5  # how often the caller checks its slices and their workers
_RESULT_TIMEOUT_S = 60.0  # a finished slice's summary (a small dict) arrives well within this
#: A slice stops its load when its caller has not checked in for this long: the caller's worker died,
#: nobody will merge these records, and a retry of the shard must not meet this load at the endpoint.
CALLER_LOST_S = 20.0
#: A retry waits this much longer than `CALLER_LOST_S` (the slices' own polling, a loaded host).
_STOP_MARGIN_S = 10.0
_BEAT_CHECK_S = 2.0  # how often a slice looks at its caller's heartbeat
_CLOCK_SAMPLES = 7
#: The shard is invalid when the clock offsets' combined uncertainty exceeds this share of its duration.
MAX_CLOCK_SHARE = 0.01
_T_COLUMNS = ("t_scheduled", "t_start", "t_first_token", "t_end")

__all__ = ["MAX_CLOCK_SHARE", "HostClock", "check_hosts_reach", "clock_verdict", "current_worker", "dask_client",
           "deal_ids", "run_shard_hosts", "stamp_host"]


class HostClock(BaseModel):
    """One client host of a multi-host shard: who it was, its clock against the scheduler, its share."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="The Dask worker's name (records column client_host).")
    address: str = Field(description="The Dask worker's address.")
    offset_s: float = Field(description="This worker's wall clock minus the scheduler's, seconds.")
    uncertainty_s: float = Field(description="Half the best round trip of the offset measurement, seconds.")
    shift_s: float = Field(
        description="Added to this host's t_* stamps to put them on the first host's timeline, seconds.")
    concurrency: int = Field(description="Closed loop: its share of the requests in flight (0 open loop).")
    requests: int = Field(default=0, description="Records it wrote (warm-ups and attempts included).")
    start_late_s: float = Field(default=0.0, description="How late it started after the agreed instant.")
    client_cpu_s: float = Field(default=0.0, description="Its process CPU time over the slice, seconds.")
    max_request_rate: float | None = Field(
        default=None, description="Its own calibrated ceiling, requests/s of one process (None: not calibrated).")
    calibration: dict[str, Any] | None = Field(default=None, description="Its own calibration (calibration.json).")


def deal_ids(total: int, weights: list[int]) -> list[list[int]]:
    """Request ids ``0..total-1`` dealt to hosts in proportion to ``weights``, interleaved in order."""
    out: list[list[int]] = [[] for _ in weights]
    for i in range(total):
        k = min(range(len(weights)), key=lambda j: ((len(out[j]) + 1) / max(weights[j], 1e-9), j))
        out[k].append(i)
    return out


def clock_verdict(clocks: list[HostClock], duration_s: float) -> str | None:
    """Why the shard's clocks are too uncertain for its duration, or None when they are good enough."""
    if len(clocks) < 2 or duration_s <= 0:
        return None
    spread = 2 * max(c.uncertainty_s for c in clocks)
    if spread > MAX_CLOCK_SHARE * duration_s:
        return (f"client hosts' clock offsets are uncertain by up to {spread * 1e3:.1f} ms, more than "
                f"{MAX_CLOCK_SHARE:.0%} of the shard's {duration_s:.3g} s: its wall-time throughput is not reliable")
    return None


_CLIENTS: dict[str, Any] = {}


def dask_client(address: str | None = None) -> Any:
    """A `distributed.Client`: inside a Dask task its worker's, else the process's current one, else one
    connected to ``address`` (e.g. ``FMBENCH_TASK_RUNNER=tcp://host:8786``).

    Raises:
        ConfigError: ``distributed`` is not installed or no cluster is known.
    """
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError("client_hosts needs the dask extra (uv sync --extra dask)") from exc
    with contextlib.suppress(ValueError):
        return distributed.get_client()
    if address:
        if address not in _CLIENTS:  # one connection per cluster for the process, not one per shard
            _CLIENTS[address] = distributed.Client(address, timeout=30, set_as_default=False)
        return _CLIENTS[address]
    raise ConfigError("client_hosts needs a Dask cluster: set FMBENCH_TASK_RUNNER=tcp://scheduler:8786")


def current_worker() -> str | None:
    """The name of the Dask worker running this code; None outside one (or without ``distributed``)."""
    if "distributed" not in sys.modules:  # nothing imported it: not on a worker, and no import cost
        return None
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:
        return None


def stamp_host(path: str | Path, host: str) -> None:
    """Set the ``client_host`` of every record in the local records file ``path`` (a shard sent
    from one Dask worker), replacing the file atomically."""
    final = Path(path)
    tmp = partial_path(final)
    try:
        table = pq.read_table(final)
        i = table.schema.get_field_index("client_host")
        table = table.set_column(i, "client_host", pa.array([host] * table.num_rows, type=pa.string()))
        pq.write_table(table.cast(ARROW_SCHEMA), tmp, compression="zstd")
        tmp.replace(final)
    except OSError as exc:
        raise StorageError(f"{final}: cannot record the client host: {exc}") from exc


def _measure_clock(client: Any) -> tuple[float, float, float]:
    """(wall offset to the scheduler, uncertainty, monotonic -> scheduler wall shift) over a few round trips."""
    best: tuple[float, float, float] | None = None
    for _ in range(_CLOCK_SAMPLES):
        w0, m0 = time.time(), time.monotonic()
        s = float(client.run_on_scheduler(time.time))
        w1, m1 = time.time(), time.monotonic()
        half = (m1 - m0) / 2
        sample = ((w0 + w1) / 2 - s, half, s - (m0 + m1) / 2)
        if best is None or half < best[1]:
            best = sample
    assert best is not None
    return best


_HOST_CALIBRATION: Any = None  # one calibration per worker process, reused by its later slices


def _host_calibration() -> Any:
    global _HOST_CALIBRATION
    if _HOST_CALIBRATION is None:
        from fmbench.calibration import calibrate_host

        _HOST_CALIBRATION = calibrate_host()
    return _HOST_CALIBRATION


def _slice(k: int, n: int, payload: bytes, ids: list[int] | None, concurrency: int, key: str, out_url: str,
           calibrate: bool) -> dict[str, Any]:
    """One host's slice of the shard (runs as a task on a Dask worker)."""
    from distributed import Event, Queue, Variable, get_client, get_worker

    worker = get_worker()
    host = str(worker.name)
    client, prompts, spec, count_tokens = pickle.loads(payload)
    try:  # the output must be reachable from here before anything is sent
        storage.write_text(out_url, f"probe from {host}")  # replaced by the records below
    except Exception as exc:
        raise StorageError(f"client host {host} cannot write the run's output {out_url}: {exc}") from exc
    cal = _host_calibration() if calibrate else None
    sched = get_client()
    offset, unc, mono_to_sched = _measure_clock(sched)
    ready = Queue(f"{key}-ready", client=sched)
    total = spec.warmup + spec.requests
    # Closed loop: this host's warm-ups are sent before it reports ready, so none is in flight when
    # the shard's measured requests start (see `warm_up`); the open loop's are in its schedule.
    warm = [i for i in ids or [] if i < spec.warmup]
    it: Iterator[int] = iter([i for i in ids or [] if i >= spec.warmup])

    def take() -> int:
        return next(it, total)

    t0_var = Variable(f"{key}-t0", client=sched)
    # The caller sets the start once every host has warmed up (or None when it gives up); a caller
    # that died sets nothing: wait as long as the other hosts' warm-ups may take, every one timing out.
    timeout_s = float(getattr(getattr(client, "inference", None), "timeout_s", None) or _WARM_UP_TIMEOUT_S)
    wait_s = _READY_TIMEOUT_S + spec.warmup * (spec.request_retries + 1) * timeout_s

    def start_time() -> float:  # (in a thread: the slice's own loop goes on meanwhile)
        try:
            t0_sched = t0_var.get(timeout=wait_s)
        except TimeoutError:
            raise FMBenchError(f"shard {spec.shard_id}: no start from the caller in {wait_s:g} s") from None
        if t0_sched is None:
            raise FMBenchError(f"shard {spec.shard_id}: stopped before the start")
        return float(t0_sched) - mono_to_sched

    with tempfile.TemporaryDirectory(prefix="fmbench-slice-") as tmp:
        local = Path(tmp) / f"{spec.shard_id}.host-{k}.parquet"

        async def main() -> tuple[list[float], float, float]:
            cpu0 = time.process_time()
            writer = RecordWriter(local)
            shard = _Shard(spec, prompts, writer, count_tokens)
            async with shard_session(client, writer, 0 if spec.open_loop else concurrency) as session:
                if warm:
                    await asyncio.to_thread(ready.put, ["warming", k])
                    await warm_up(client, shard, warm, concurrency)
                await asyncio.to_thread(ready.put, k)
                t0 = await asyncio.to_thread(start_time)
                # The caller adds up the slices' progress (`_SliceProgress`); an event is sent without waiting.
                session.reporter = asyncio.ensure_future(report_progress(
                    shard, lambda done, errors, ttft: worker.log_event(f"{key}-progress", [k, done, errors, ttft]),
                    PROGRESS_EVERY_S))
                late = max(0.0, time.monotonic() - t0)
                load = asyncio.ensure_future(_open_loop(client, shard, t0, (k, n)) if spec.open_loop
                                             else _closed_loop(client, shard, concurrency, take, t0))
                watcher = asyncio.ensure_future(_watch_stop(Event(f"{key}-stop", client=sched),
                                                             Variable(f"{key}-beat", client=sched), load))
                try:
                    await load
                finally:
                    watcher.cancel()
            writer.commit()
            return list(shard.stats.dispatch_lags), time.process_time() - cpu0, late

        lags, cpu, late = asyncio.run(main())
        rows = pq.ParquetFile(local).metadata.num_rows
        storage.write_bytes(out_url, local.read_bytes())
    return {
        "k": k, "host": host, "address": str(worker.address), "offset_s": offset, "uncertainty_s": unc,
        "mono_to_sched": mono_to_sched, "concurrency": concurrency, "requests": rows, "start_late_s": late,
        "client_cpu_s": cpu, "lags": lags, "out_url": out_url, "receive_stamps": receive_stamps(client),
        "calibration": cal.model_dump(mode="json") if cal is not None else None,
    }


async def _watch_stop(event: Any, beat: Any, load: asyncio.Future[None]) -> None:
    """Cancel this slice's load when the caller gave up on the shard (another host failed) or is gone
    (its heartbeat has not changed for `CALLER_LOST_S` on this host's own clock)."""
    loop = asyncio.get_running_loop()
    # Its own threads, not the loop's default executor: `asyncio.run` waits for every thread of
    # that one at its end, so a scheduler round trip that hangs would hold the slice's result
    # (and the shard) long after its load ended. These are left to finish on their own.
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fmbench-slice-stop")
    last: Any = None
    changed_at = checked_at = time.monotonic()
    try:
        while not load.done():
            if await loop.run_in_executor(pool, event.is_set):
                load.cancel()
                return
            if time.monotonic() - checked_at >= _BEAT_CHECK_S:  # rarely: each check is a scheduler round trip
                checked_at = time.monotonic()
                with contextlib.suppress(Exception):  # not set yet, or the scheduler slow to answer: no news
                    value = await loop.run_in_executor(pool, functools.partial(beat.get, timeout=_POLL_S))
                    if value != last:
                        last, changed_at = value, time.monotonic()
            if time.monotonic() - changed_at > CALLER_LOST_S:
                load.cancel()
                return
            await asyncio.sleep(_POLL_S)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _live_workers(dask_scheduler: Any = None) -> dict[str, str]:
    return {addr: str(ws.name) for addr, ws in dask_scheduler.workers.items()}


def live_workers(dask: Any) -> dict[str, str]:
    """The cluster's workers now: address -> name."""
    return dict(dask.run_on_scheduler(_live_workers))


def _probe(url: str) -> str:
    """Write a probe file at ``url`` from this worker; returns the worker's name (runs as a Dask task)."""
    from distributed import get_worker

    name = str(get_worker().name)
    storage.write_text(url, name)
    return name


def check_hosts_reach(dask: Any, run_url: str) -> list[str]:
    """Check that every worker of the cluster can write into the run's storage and that this process
    reads what it wrote (a worker writing to its own disk is not the run's storage).

    Returns:
        The workers' names.

    Raises:
        StorageError: one line naming the first worker that cannot reach the output.
        ConfigError: the cluster has no workers.
    """
    live = live_workers(dask)
    if not live:
        raise ConfigError("client_hosts: the Dask cluster has no workers")
    names = {}
    for addr, name in sorted(live.items(), key=lambda kv: kv[1]):
        url = storage.join(run_url, "shards", "hosts", f".reach-{uuid.uuid4().hex[:8]}")
        fut = dask.submit(_probe, url, workers=[addr], allow_other_workers=False, pure=False, retries=0)
        try:
            fut.result(timeout=_READY_TIMEOUT_S)
            seen = storage.read_text(url)
        except Exception as exc:
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StorageError(f"client host {name} cannot write the run's output {run_url}: {cause}") from exc
        if seen != name:
            raise StorageError(f"client host {name} wrote {run_url} but this machine reads something else there")
        storage.remove(url)
        names[addr] = name
    return sorted(names.values())


def _pick_workers(dask: Any, n: int, spec: ShardSpec) -> list[str]:
    live = dask.run_on_scheduler(_live_workers)
    if len(live) < n:
        raise ConfigError(f"shard {spec.shard_id}: client_hosts is {n} but the Dask cluster has {len(live)} worker(s)")
    return sorted(live, key=lambda a: live[a])[:n]


def run_shard_hosts(
    client: EndpointClient,
    prompts: list[Prompt],
    spec: ShardSpec,
    out_path: str | Path,
    count_tokens: Callable[[str], int],
    hosts: int,
    dask: Any,
    slice_url: Callable[[int], str],
    calibrate: bool = False,
    stop: StopScope | None = None,
    progress: Progress | None = None,
) -> tuple[ShardResult, list[HostClock]]:
    """Run a shard as ``hosts`` slices on as many Dask workers at once; merge their records into ``out_path``.

    Args:
        client, prompts, spec, count_tokens: as for `fmbench.loadgen.run_shard` (sent to the workers by
            pickle; ``spec.processes`` is ignored: one process per host).
        out_path: local parquet path of the merged records (with the ``client_host`` column).
        hosts: how many workers share the shard.
        dask: a `distributed.Client` (see `dask_client`).
        slice_url: where slice ``k`` writes its records (the run's storage, reachable from every worker).
        calibrate: each worker calibrates its own client first (once per worker process).
        stop: the run's `fmbench.interrupts.StopScope`: when the run stops, the slices are told to
            stop (within a check, half a second) and `ShardCancelled` is raised.
        progress: called in this thread with the slices' requests done so far, added up (see
            `fmbench.loadgen.engine.Progress`), at most every half second.

    Returns:
        The shard's summary (validity includes the clock check) and one `HostClock` per host.

    Raises:
        ConfigError: the cluster has fewer workers than ``hosts``, or the client cannot be pickled.
        FMBenchError: a slice failed or its worker left before the slice finished (never a silently
            short shard; a worker that leaves after its slice finished costs the shard nothing).
        StorageError: a worker cannot write the output, or the records cannot be merged.
    """
    if not prompts:
        raise FMBenchError(f"shard {spec.shard_id}: no prompts to send")
    if not spec.open_loop and hosts > spec.concurrency:
        raise ConfigError(f"shard {spec.shard_id}: client_hosts ({hosts}) cannot exceed concurrency ({spec.concurrency})")
    if spec.max_concurrency is not None and hosts > 1:
        raise ConfigError(f"shard {spec.shard_id}: max_concurrency cannot be split over client hosts")
    one = spec.model_copy(update={"processes": 1})
    try:
        payload = pickle.dumps((client, prompts, one, count_tokens))
    except Exception as exc:  # pickle raises many types
        raise ConfigError(f"shard {spec.shard_id}: client_hosts needs a picklable client ({exc})") from exc
    addresses = _pick_workers(dask, hosts, spec)
    conc = [0] * hosts if spec.open_loop else [spec.concurrency // hosts + (k < spec.concurrency % hosts)
                                                for k in range(hosts)]
    ids: list[Any] = [None] * hosts if spec.open_loop else deal_ids(spec.warmup + spec.requests, conc)
    key = f"fmbench-{spec.shard_id}-{uuid.uuid4().hex[:8]}"
    # A stopping run waits for this shard's end (its checks see the stop and tell the slices to stop).
    ended = stop.register(lambda: None) if stop is not None else None
    try:
        with _seceded():
            owner = _claim(dask, spec, slice_url(0), key)
            try:
                return _drive(dask, spec, one, payload, addresses, conc, ids, key, slice_url, calibrate, out_path,
                              hosts, stop, progress)
            finally:
                with contextlib.suppress(Exception):
                    owner.delete()
    finally:
        if ended is not None:
            ended()


def _claim(dask: Any, spec: ShardSpec, where: str, key: str) -> Any:
    """Make ``key`` the one attempt measuring this shard (named by where its records go).

    An attempt whose caller died (the worker running the shard's task was lost, and Dask then runs the
    task again elsewhere) leaves its claim behind, and its slices keep sending until they notice, within
    `CALLER_LOST_S`: wait that long so that this attempt never measures on top of their load; if that
    attempt's heartbeat still moves, it is alive and this one refuses to start.
    """
    from distributed import Variable

    owner = Variable(f"fmbench-owner-{hashlib.sha256(where.encode()).hexdigest()[:16]}", client=dask)
    previous = _peek(owner)
    if previous is not None:
        beat = Variable(f"{previous}-beat", client=dask)
        last = _peek(beat)
        log.warning("shard %s: an earlier attempt was cut off mid-shard; waiting %.0f s for its client hosts "
                    "to stop sending", spec.shard_id, CALLER_LOST_S + _STOP_MARGIN_S)
        until = time.monotonic() + CALLER_LOST_S + _STOP_MARGIN_S
        while time.monotonic() < until:
            time.sleep(_POLL_S)
            if _peek(beat) != last:
                raise FMBenchError(f"shard {spec.shard_id}: another attempt is measuring this shard now")
    owner.set(key)
    return owner


def _peek(variable: Any) -> Any:
    """A Dask Variable's value, None when it is not set."""
    try:
        return variable.get(timeout=0.2)
    except Exception:  # noqa: BLE001 - unset (a timeout) or gone: nothing there
        return None


@contextlib.contextmanager
def _seceded() -> Iterator[None]:
    """Inside a Dask task, free this worker's thread while the slices (maybe one on this worker) run."""
    import distributed

    try:
        distributed.get_worker()
    except ValueError:
        yield
        return
    distributed.secede()
    try:
        yield
    finally:
        distributed.rejoin()


class _SliceProgress:
    """The slices' progress events, added up: the latest of each slice is kept as it arrives (in the
    Dask client's thread) and the sum is reported by the caller's own thread (`report`), where the
    run's context is (a shard on a Dask worker passes it on to the run from there)."""

    def __init__(self, dask: Any, topic: str, total: int, progress: Progress) -> None:
        self.dask, self.topic, self.total, self.progress = dask, topic, total, progress
        self.latest: dict[int, tuple[int, int, float | None]] = {}
        self.reported: dict[int, tuple[int, int, float | None]] = {}
        dask.subscribe_topic(topic, self._event)

    def _event(self, event: Any) -> None:
        k, done, errors, ttft = event[1]
        self.latest = {**self.latest, int(k): (int(done), int(errors), ttft)}  # one reference swap

    def report(self) -> None:
        latest = self.latest
        if latest == self.reported:
            return
        self.reported = latest
        report_sum(self.progress, self.total, latest)

    def close(self) -> None:
        from fmbench.progress import forget_events

        with contextlib.suppress(Exception):
            self.dask.unsubscribe_topic(self.topic)
            forget_events(self.dask, self.topic)


def _drive(dask: Any, spec: ShardSpec, one: ShardSpec, payload: bytes, addresses: list[str], conc: list[int],
           ids: list[Any], key: str, slice_url: Callable[[int], str], calibrate: bool, out_path: str | Path,
           hosts: int, stop: StopScope | None = None,
           progress: Progress | None = None) -> tuple[ShardResult, list[HostClock]]:
    from distributed import Event, Queue, Variable

    ready, t0var = Queue(f"{key}-ready", client=dask), Variable(f"{key}-t0", client=dask)
    beat = Variable(f"{key}-beat", client=dask)
    sums = _SliceProgress(dask, f"{key}-progress", spec.warmup + spec.requests, progress) if progress else None
    futures = [
        dask.submit(_slice, k, hosts, payload, ids[k], conc[k], key, slice_url(k), calibrate,
                    workers=[addr], allow_other_workers=False, pure=False, retries=0, key=f"{key}-slice-{k}")
        for k, addr in enumerate(addresses)
    ]
    taken: dict[int, dict[str, Any]] = {}
    try:
        got = 0
        deadline = time.monotonic() + _READY_TIMEOUT_S
        warming: set[int] = set()  # slices sending their warm-ups: started, bounded by the requests' timeouts
        while got < hosts:
            _check(dask, futures, addresses, spec, stop)
            if time.monotonic() > deadline and got + len(warming) < hosts:
                raise FMBenchError(f"shard {spec.shard_id}: client hosts not ready in {_READY_TIMEOUT_S:g} s")
            with contextlib.suppress(TimeoutError):
                item = ready.get(timeout=_POLL_S)
                if isinstance(item, (list, tuple)):  # ["warming", k]
                    warming.add(int(item[1]))
                else:
                    warming.discard(int(item))
                    got += 1
        beat.set(0)
        t0var.set(float(dask.run_on_scheduler(time.time)) + _START_LEAD_S)
        n = 0
        while _take_finished(futures, taken, spec) < hosts:
            pending = [k for k in range(hosts) if k not in taken]
            _check(dask, [futures[k] for k in pending], [addresses[k] for k in pending], spec, stop)
            n += 1
            beat.set(n)  # the slices' sign that someone still waits for them
            if sums is not None:
                sums.report()
            _wait_first([futures[k] for k in pending], _POLL_S)
        results = [taken[k] for k in range(hosts)]
    except BaseException:
        with contextlib.suppress(Exception):
            t0var.set(None)
            Event(f"{key}-stop", client=dask).set()
        running = [f for k, f in enumerate(futures) if k not in taken]
        if running:
            dask.cancel(running, force=True)
        raise
    finally:
        with contextlib.suppress(Exception):
            ready.close()
            beat.delete()
        if sums is not None:
            sums.close()
    base = results[0]["mono_to_sched"]
    clocks = [HostClock(
        host=r["host"], address=r["address"], offset_s=r["offset_s"], uncertainty_s=r["uncertainty_s"],
        shift_s=r["mono_to_sched"] - base, concurrency=r["concurrency"], requests=r["requests"],
        start_late_s=r["start_late_s"], client_cpu_s=r["client_cpu_s"], calibration=r["calibration"],
        max_request_rate=(r["calibration"] or {}).get("max_request_rate")) for r in results]
    stats = _merge(out_path, [r["out_url"] for r in results], clocks)
    for r in results:
        stats.dispatch_lags.extend(r["lags"])
    result = shard_result(one, stats, Path(out_path), sum(c.client_cpu_s for c in clocks),
                          add_stamps([r.get("receive_stamps") for r in results]))
    reason = clock_verdict(clocks, result.duration_s)
    if reason is not None and result.valid:
        result = result.model_copy(update={"valid": False, "invalid_reason": reason})
    return result, clocks


def _wait_first(futures: list[Any], timeout: float) -> None:
    """Return when one of ``futures`` is done, or after ``timeout``: a slice's summary is then taken at
    once, which leaves its host almost no time in which its loss would still cost the shard."""
    from distributed import wait

    # Only a pause: a failed or cancelled slice (wait raises for those) is reported by the checks.
    with contextlib.suppress(Exception):
        wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")


def _take_finished(futures: list[Any], taken: dict[int, dict[str, Any]], spec: ShardSpec) -> int:
    """Move each newly finished slice's result into ``taken`` and let go of its future; how many are taken.

    A finished slice's records are on the run's storage and its summary is here: its host may leave now
    without costing the shard. Holding the future would not keep that: Dask computes a finished task
    again when the worker holding its result is lost, and a slice pinned to a dead worker never runs,
    so the shard would fail although every request of that slice was measured.
    """
    for k, f in enumerate(futures):
        if k in taken or f.status != "finished":
            continue
        try:
            taken[k] = f.result(timeout=_RESULT_TIMEOUT_S)
        except TimeoutError as exc:  # its worker was lost between the status and the result
            raise FMBenchError(f"shard {spec.shard_id}: client host {k}'s finished slice was lost before "
                               "its summary arrived") from exc
        f.release()
    return len(taken)


def _check(dask: Any, futures: list[Any], addresses: list[str], spec: ShardSpec, stop: StopScope | None = None) -> None:
    """Raise when the run stops, a slice failed or its worker left the cluster."""
    if stop is not None and stop.stopped:  # the caller's clean-up then tells the slices to stop
        raise ShardCancelled.with_the_run(spec.shard_id)
    for f in futures:
        if f.status in ("error", "cancelled"):
            exc = f.exception() if f.status == "error" else None
            raise FMBenchError(f"shard {spec.shard_id}: a client host failed: {exc or 'cancelled'}")
    live = dask.run_on_scheduler(_live_workers)
    gone = [a for a, f in zip(addresses, futures, strict=True) if a not in live and f.status != "finished"]
    if gone:
        raise FMBenchError(f"shard {spec.shard_id}: client host {', '.join(gone)} left the cluster mid-shard")


def _merge(out: str | Path, urls: list[str], clocks: list[HostClock]) -> ShardStats:
    """Append the slices' records into ``out`` (atomically), each stamped with its host and timeline shift."""
    final = Path(out)
    tmp = partial_path(final)
    stats = ShardStats()
    try:
        writer = open_records_file(tmp)
        with contextlib.closing(writer):
            for url, clock in zip(urls, clocks, strict=True):
                table = pq.read_table(pa.BufferReader(storage.read_bytes(url)))
                for name in _T_COLUMNS:
                    i = table.schema.get_field_index(name)
                    shifted = pa.array([None if v is None else v + clock.shift_s
                                        for v in table.column(name).to_pylist()], type=pa.float64())
                    table = table.set_column(i, name, shifted)
                i = table.schema.get_field_index("client_host")
                table = table.set_column(i, "client_host", pa.array([clock.host] * table.num_rows, type=pa.string()))
                writer.write_table(table.cast(ARROW_SCHEMA))
                ids = table.select(["request_id", "attempt"]).to_pydict()  # (a request's attempts: one host's)
                stats.observe_records(table, final_attempt_mask(ids["request_id"], ids["attempt"]))
        tmp.replace(final)
    except (OSError, StorageError) as exc:
        raise StorageError(f"{out}: cannot merge the client hosts' records: {exc}") from exc
    if not math.isfinite(stats.first_start) and stats.measured:
        raise FMBenchError(f"{out}: no measured request of the client hosts was sent")
    return stats
