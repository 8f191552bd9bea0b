"""The async load engine: drives one shard against an `EndpointClient` and records every request.

Closed loop: ``concurrency`` workers pull request ids from one shared counter, so exactly that many
requests are in flight for the whole shard; a worker starts its next request as soon as its
previous one ends (never in waves). ``t_scheduled = t_start``.

Open loop: a pacer dispatches request ``i`` at ``t0 + sum(gaps[:i])`` with gaps drawn from a
seeded generator (exponential, gamma with shape ``burstiness``, or constant). It sleeps until
``_SPIN_S`` before the due time and then yield-spins (``asyncio.sleep(0)``, so responses keep
being read), because the event loop's timers fire up to ~1 ms late (epoll rounds its timeout up to
whole milliseconds); ``_SPIN_S`` trades that lateness against the spin's CPU, and one process's
open-loop ceiling is what ``processes`` is for (both measured: benchmarks/results/README.md,
"Open-loop pacing"). Latency and TTFT count from the *scheduled* time, so a late send or a
``max_concurrency`` wait is charged to the request (coordinated omission counted). The shard is flagged invalid when the achieved send rate falls
more than ``rate_shortfall`` below the schedule's own rate, or the pacer's dispatch lateness p99
exceeds ``max_send_lag_s`` -- i.e. when the client, not the endpoint, limited the offered load (or,
when requests waited for a slot, the ``max_concurrency`` cap did, and the reason says so). Whether the
endpoint kept up with the load it was offered is judged separately (`fmbench.loadgen.overload`): an
endpoint that completed requests measurably slower than they arrived is flagged ``overloaded`` (not
judged when the client itself fell short of the schedule: its lateness would show as the endpoint's).

Every scheduled request yields exactly one `RequestRecord` (ok, an `EndpointError`'s kind, or
``protocol`` for an unexpected exception); records stream to disk through `RecordWriter`.
On cancellation in-flight requests are recorded as ``cancelled`` and the file stays ``.partial``.

With ``spec.processes > 1`` the shard is split over several client processes sharing one timeline
and one records file (see `fmbench.loadgen.multiproc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import statistics
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from fmbench.errors import DatasetError, EndpointError, FMBenchError, silent_timeout
from fmbench.interrupts import Stopped, StopScope, run_until_stopped
from fmbench.loadgen.heap import frozen_heap
from fmbench.loadgen.overload import CompletionFit, judge_overload
from fmbench.loadgen.spec import ShardResult, ShardSpec
from fmbench.loadgen.writer import SCALAR_FIELDS, RecordWriter
from fmbench.protocol import Completion, EndpointClient, Prompt
from fmbench.records import RequestRecord

log = logging.getLogger("fmbench")

_SPIN_S = 0.0012  # pacer: stop sleeping this long before a due time, then yield-spin
_LEAD_S = 0.005  # open loop: the first arrival is due this long after the schedule is set up
#: A shard stops sending once this many requests in a row, and at least as many as it keeps in
#: flight, timed out with no byte of an answer (`fmbench.errors.silent_timeout`): its endpoint took
#: them and stopped answering. Without this stop every request of the shard would wait out its whole
#: timeout, for hours, while a paid endpoint bills (`_Shard.halted`).
HUNG_MIN_REQUESTS = 5
PROGRESS_EVERY_S = 1.0  # how often a running shard reports its requests done (a live view redraws)
_RECENT_TTFTS = 256  # the "current" TTFT p50 of a progress report is over this many latest requests

#: ``progress(done, total, errors, ttft_p50_s)``: requests recorded so far (warm-ups included), the
#: shard's total, measured requests that failed, and the median TTFT of the latest successful
#: requests (None before the first). Called every `PROGRESS_EVERY_S` while a shard runs.
Progress = Callable[[int, int, int, float | None], None]

__all__ = ["run_shard", "run_shard_async"]

#: The values of a successful request's row as `_Shard._ok` builds them (`RecordWriter.add_row`).
_OK_ROW = ("experiment", "dataset", "bucket", "bucket_min", "bucket_max", "concurrency", "request_rate", "shard_id",
           "request_id", "prompt_id", "attempt", "warmup", "ok", "error_kind", "error", "http_status", "input_tokens",
           "output_tokens", "usage_source", "t_scheduled", "t_start", "t_first_token", "t_end", "send_lag_s", "ttft_s",
           "latency_s", "tpot_s", "chunks", "resends", "note", "text", "client_host", "cached_tokens")
if _OK_ROW != SCALAR_FIELDS:  # the record schema changed: _Shard._ok must follow it
    raise ImportError(f"fmbench.loadgen.engine builds rows as {_OK_ROW}, the writer expects {SCALAR_FIELDS}")


def arrival_gaps(spec: ShardSpec) -> Iterator[float]:
    """Seconds between consecutive arrivals of an open-loop shard, deterministic for ``spec.seed``."""
    rate = spec.request_rate
    if rate is None:
        raise ValueError("arrival_gaps needs an open-loop spec (request_rate set)")
    rng = random.Random(spec.seed)
    if spec.arrival == "constant":
        while True:
            yield 1.0 / rate
    elif spec.arrival == "poisson":
        while True:
            yield rng.expovariate(rate)
    else:
        k = spec.burstiness
        scale = 1.0 / (rate * k)
        while True:
            yield rng.gammavariate(k, scale)


def _p99(values: array[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


#: A record's fields `ShardStats.observe` counts, in its order.
_OBSERVED = ["warmup", "ok", "t_start", "t_end", "t_scheduled", "send_lag_s"]


def final_attempt_mask(request_ids: list[int | None], attempts: list[int | None]) -> list[bool]:
    """Per record, whether it is its request's final attempt (the highest ``attempt`` of its request
    id): a retried request is one request, counted by its outcome (see `fmbench.loadgen.retry`)."""
    last: dict[int | None, int] = {}
    for rid, attempt in zip(request_ids, attempts, strict=True):
        a = attempt or 1
        if a > 1 and a > last.get(rid, 1):
            last[rid] = a
    if not last:  # nothing retried: every record is its request's only attempt
        return [True] * len(request_ids)
    return [(attempt or 1) == last.get(rid, 1) for rid, attempt in zip(request_ids, attempts, strict=True)]


def first_sends(request_ids: list[int | None], t_starts: list[float | None]) -> list[float | None]:
    """Per record, when its request was first sent: the earliest ``t_start`` of its attempts (a
    retried request's last attempt leaves after its backoffs; the client sent the request on time)."""
    first: dict[int | None, float] = {}
    for rid, t in zip(request_ids, t_starts, strict=True):
        if t is not None and (rid not in first or t < first[rid]):
            first[rid] = t
    return [first.get(rid) for rid in request_ids]


class ShardStats:
    """Running statistics of a shard's measured requests (also rebuilt from merged records).

    ``first_start``/``last_start`` are the earliest and the latest first send of a measured request:
    the open loop's achieved send rate is judged on them, so a retried request (its last attempt sent
    after its backoffs, by design) does not make a client that kept its schedule look late.
    """

    def __init__(self, fit_completion: bool = True) -> None:
        """``fit_completion``: keep the open loop's fit of end on scheduled time (`completion`;
        a closed-loop shard, which has no schedule to keep up with, skips its sums: None)."""
        self.measured = 0
        self.warm = 0
        self.errors = 0
        self.first_start = math.inf
        self.last_start = -math.inf
        self.last_end = -math.inf
        self.first_sched = math.inf
        self.last_sched = -math.inf
        self.send_lags: array[float] = array("d")
        self.dispatch_lags: array[float] = array("d")
        self.recent_ttfts: deque[float] = deque(maxlen=_RECENT_TTFTS)
        self.slot_waits = 0  # open loop: measured requests that waited for a max_concurrency slot
        # open loop: ok requests' end time on scheduled time
        self.completion: CompletionFit | None = CompletionFit() if fit_completion else None

    def ttft_p50(self) -> float | None:
        """Median TTFT of the latest successful measured requests, for progress reports."""
        return statistics.median(self.recent_ttfts) if self.recent_ttfts else None

    def observe(
        self,
        warmup: bool,
        ok: bool,
        t_start: float | None,
        t_end: float | None,
        t_scheduled: float | None,
        send_lag: float | None,
        first_sent: float | None = None,
    ) -> None:
        """Count one record (``first_sent``: when its request's first attempt was sent, if retried)."""
        if warmup:
            self.warm += 1
            return
        self.measured += 1
        if not ok:
            self.errors += 1
        if t_start is None or t_end is None or t_scheduled is None:
            return  # cancelled before sending: recorded, but it says nothing about timing
        sent = t_start if first_sent is None else min(first_sent, t_start)
        self.first_start = min(self.first_start, sent)
        self.last_start = max(self.last_start, sent)
        self.last_end = max(self.last_end, t_end)
        self.first_sched = min(self.first_sched, t_scheduled)
        self.last_sched = max(self.last_sched, t_scheduled)
        if send_lag is not None:
            self.send_lags.append(send_lag)
        if ok and self.completion is not None:
            self.completion.add(t_scheduled, t_end)

    def observe_records(self, table: pa.Table, final: list[bool], sent: list[float | None] | None = None) -> None:
        """Count a table of records (another process's or host's), each request by its final attempt
        only (``final``: `final_attempt_mask` of the requests' attempts), as the engine counts its own;
        ``sent``: `first_sends` of the records (None: taken from this table, which holds every attempt)."""
        columns = table.select(_OBSERVED).to_pydict()
        if sent is None:
            sent = first_sends(table.column("request_id").to_pylist(), columns["t_start"])
        rows = zip(*(columns[name] for name in _OBSERVED), strict=True)
        for (warmup, ok, t_start, t_end, t_sched, lag), is_final, first in zip(rows, final, sent, strict=True):
            if is_final:
                self.observe(warmup, ok, t_start, t_end, t_sched, lag, first)

    def observe_ok(self, t_start: float, t_end: float, t_sched: float, ttft: float | None,
                   sent: float | None = None) -> None:
        """Count one successful measured request (`observe`'s result for it, with fewer steps: it runs
        once per request; comparisons, not min/max calls). ``sent``: as `observe`'s ``first_sent``."""
        self.measured += 1
        if sent is None or sent > t_start:
            sent = t_start
        if sent < self.first_start:  # noqa: PLR1730
            self.first_start = sent
        if sent > self.last_start:  # noqa: PLR1730
            self.last_start = sent
        if t_end > self.last_end:  # noqa: PLR1730
            self.last_end = t_end
        if t_sched < self.first_sched:  # noqa: PLR1730
            self.first_sched = t_sched
        if t_sched > self.last_sched:  # noqa: PLR1730
            self.last_sched = t_sched
        self.send_lags.append(t_start - t_sched)
        if (fit := self.completion) is not None:
            fit.add(t_sched, t_end)
        if ttft is not None:
            self.recent_ttfts.append(ttft)


class _Shard:
    """State of one running shard: builds records, feeds the writer, keeps running statistics."""

    def __init__(
        self, spec: ShardSpec, prompts: list[Prompt], writer: RecordWriter, count_tokens: Callable[[str], int]
    ) -> None:
        self.spec = spec
        self.prompts = prompts
        self.writer = writer
        self.count_tokens = count_tokens
        self.total = spec.warmup + spec.requests
        self.concurrency = spec.concurrency if not spec.open_loop else (spec.max_concurrency or 0)
        self.stats = ShardStats(fit_completion=spec.open_loop)
        self._retries = bool(spec.request_retries or spec.throttle_retries)
        self.first_sent: dict[int, float] = {}  # retried requests: when their first attempt was sent
        # A successful request's record is one tuple in the writer's order (`SCALAR_FIELDS`), built
        # without a RequestRecord: these leading fields are the same for every request of the shard.
        self._head = (spec.experiment, spec.dataset, spec.bucket, spec.bucket_min, spec.bucket_max,
                      self.concurrency, spec.request_rate, spec.shard_id)
        #: Why the shard stopped sending (its endpoint stopped answering), or None; the loops send no
        #: request once it is set, and the requests in flight end by themselves.
        self.halted: str | None = None
        self._silent = 0  # requests in a row that timed out with no byte of an answer
        self._hung_after = max(HUNG_MIN_REQUESTS, self.concurrency or spec.concurrency or 1)

    def _base(self, i: int, prompt: Prompt) -> RequestRecord:
        s = self.spec
        return RequestRecord(
            experiment=s.experiment,
            dataset=s.dataset,
            bucket=s.bucket,
            bucket_min=s.bucket_min,
            bucket_max=s.bucket_max,
            concurrency=self.concurrency,
            shard_id=s.shard_id,
            request_id=i,
            prompt_id=prompt.prompt_id,
            request_rate=s.request_rate,
            warmup=i < s.warmup,
        )

    async def run_one(
        self, client: EndpointClient, i: int, t_sched: float | None, slot: asyncio.Semaphore | None = None
    ) -> None:
        """Send request ``i`` and record it, whatever happens."""
        if self._retries:  # each attempt recorded, see loadgen.retry
            from fmbench.loadgen.retry import run_with_retries

            return await run_with_retries(self, client, i, t_sched, slot, self.spec.request_retries,
                                          self.spec.throttle_retries, self.spec.throttle_backoff_s)
        prompts = self.prompts
        prompt = prompts[i % len(prompts)]
        t_before: float | None = None  # the engine's own stamp, for requests that fail
        try:
            if slot is not None:
                if slot.locked() and i >= self.spec.warmup:
                    self.stats.slot_waits += 1
                async with slot:
                    t_before = time.monotonic()
                    comp = await client.complete(prompt)
            else:
                t_before = time.monotonic()
                comp = await client.complete(prompt)
        except asyncio.CancelledError:
            rec = self._base(i, prompt)
            self._fail(rec, prompt, t_sched, t_before, "cancelled", "shard cancelled before the answer", None)
            raise
        except EndpointError as exc:
            rec = self._base(i, prompt)
            rec.resends = exc.resends
            self._fail(rec, prompt, t_sched, t_before, exc.kind, str(exc), getattr(exc, "status", None))
        except Exception as exc:  # noqa: BLE001 (a client bug must cost one record, never the shard)
            message = f"unexpected {type(exc).__name__}: {exc}"
            self._fail(self._base(i, prompt), prompt, t_sched, t_before, "protocol", message, None)
        else:
            try:
                self._ok(i, prompt, t_sched, comp)
            except Exception as exc:  # noqa: BLE001 (a malformed Completion is one failed record)
                message = f"cannot record the answer: {type(exc).__name__}: {exc}"
                self._fail(self._base(i, prompt), prompt, t_sched, t_before, "protocol", message, None)

    def _ok(self, i: int, prompt: Prompt, t_sched: float | None, comp: Completion, attempt: int = 1) -> None:
        """Record request ``i``'s successful attempt: the same fields as a `RequestRecord` filled the
        way `fill_failed` does for failures, queued as one tuple (see `RecordWriter.add_row`)."""
        # Coerce everything a client hands over, so one odd value can never break a row group; all
        # of it happens before anything is queued or counted.
        t_start, t_end = float(comp.t_start), float(comp.t_end)
        t_first = comp.t_first_token
        ts = t_start if t_sched is None else t_sched
        status = comp.http_status
        if status is not None:
            status = int(status)
        inp, out = comp.input_tokens, comp.output_tokens
        if inp is not None and out is not None:
            source = "server"
        else:  # the output count may still be the server's (llama.cpp's timings), the prompt is ours
            source = "tokenizer" if out is None else "server_output"
            if inp is None:
                inp = prompt.input_tokens
            if out is None:
                out = self.count_tokens(comp.text)
        inp, out = int(inp), int(out)
        latency = t_end - ts
        ct = comp.chunk_times
        chunks = len(ct)
        ttft = tpot = None
        if t_first is not None:
            t_first = float(t_first)
            ttft = t_first - ts
            # Without streamed chunks (stream: false) there is no first-token event: TPOT is unknown.
            if out > 1 and chunks:
                tpot = (latency - ttft) / (out - 1)
        text = str(comp.text) if self.spec.store_text else None
        cached = comp.cached_tokens
        if cached is not None:
            cached = int(cached)
        warm = i < self.spec.warmup
        row = self._head + (
            i, prompt.prompt_id, attempt, warm, True, None, None, status, inp, out, source,
            ts, t_start, t_first, t_end, t_start - ts, ttft, latency, tpot, chunks, comp.resends, comp.note,
            text, None, cached)
        if chunks:
            # The stamps go to the writer as they are: it takes the gaps of many rows at once (an
            # odd stamp fails this record there, before anything is queued).
            self.writer.add_row_stamped(row, ct)
        else:
            self.writer.add_row(row, None)
        sent = self.first_sent.pop(i, None) if self.first_sent else None
        if self._silent:
            self._silent = 0
        if warm:
            self.stats.warm += 1
        else:
            self.stats.observe_ok(t_start, t_end, ts, ttft, sent)

    def _fail(
        self,
        rec: RequestRecord,
        prompt: Prompt,
        t_sched: float | None,
        t_before: float | None,
        kind: str,
        message: str,
        status: int | None,
    ) -> None:
        fill_failed(rec, prompt, t_sched, t_before, kind, message, status)
        self._add(rec)

    def _add(self, rec: RequestRecord) -> None:
        self.writer.add(rec)
        if rec.ok:
            self._silent = 0
        elif silent_timeout(rec.error_kind, rec.error):
            self._silent += 1
            if self._silent >= self._hung_after and self.halted is None:
                self.halted = (f"{self._silent} requests in a row got {rec.error}: the endpoint takes requests and "
                               "answers none")
                log.warning("shard %s: %s; it sends no more", self.spec.shard_id, self.halted)
        elif rec.error_kind != "cancelled":
            self._silent = 0
        sent = self.first_sent.pop(rec.request_id, None) if self.first_sent else None
        self.stats.observe(rec.warmup, rec.ok, rec.t_start, rec.t_end, rec.t_scheduled, rec.send_lag_s, sent)
        if rec.ok and not rec.warmup and rec.ttft_s is not None:
            self.stats.recent_ttfts.append(rec.ttft_s)


def fill_failed(rec: RequestRecord, prompt: Prompt, t_sched: float | None, t_before: float | None, kind: str,
                message: str, status: int | None) -> None:
    """Fill the fields of a failed request's record (the engine's failures and retried attempts alike).

    Its latency runs from the scheduled time (else the send, else now) to now; ``t_start`` stays
    None when it was cancelled before it could be sent.
    """
    now = time.monotonic()
    ts = t_sched if t_sched is not None else (t_before if t_before is not None else now)
    rec.ok = False
    rec.error_kind = kind
    rec.error = message[:500]
    rec.http_status = status
    rec.input_tokens = prompt.input_tokens
    rec.t_scheduled = ts
    rec.t_start = t_before
    rec.t_end = now
    rec.send_lag_s = t_before - ts if t_before is not None else None
    rec.latency_s = now - ts
    rec.chunks = 0


def receive_stamps(client: EndpointClient) -> dict[str, int] | None:
    """The client's connections by how the arrival of answers was stamped, if it says (see
    `fmbench.protocol.EndpointClient`)."""
    counts = getattr(client, "receive_stamps", None)
    return counts() if callable(counts) else None


def add_stamps(parts: list[dict[str, int] | None]) -> dict[str, int] | None:
    """The receive-stamp counts of a shard's parts (processes, hosts) added up; None if none said."""
    total: dict[str, int] = {}
    for part in parts:
        for kind, n in (part or {}).items():
            total[kind] = total.get(kind, 0) + n
    return total or None


def shard_result(spec: ShardSpec, st: ShardStats, path: Path, cpu_s: float,
                 stamps: dict[str, int] | None = None) -> ShardResult:
    """Summarise a shard from its statistics (validity judged here)."""
    started = st.measured > 0 and math.isfinite(st.first_start)
    duration = st.last_end - st.first_start if started else 0.0
    valid, reason = True, None
    target = scheduled = None
    if spec.open_loop:
        target = spec.request_rate
        span = st.last_start - st.first_start
        sched_span = st.last_sched - st.first_sched
        achieved = (st.measured - 1) / span if st.measured > 1 and span > 0 else 0.0
        scheduled = (st.measured - 1) / sched_span if st.measured > 1 and sched_span > 0 else target
        lag99 = _p99(st.dispatch_lags)
        client_short = False
        if st.measured > 1 and scheduled and achieved < scheduled * (1 - spec.rate_shortfall):
            valid = False
            short = (f"achieved send rate {achieved:.4g}/s is more than {spec.rate_shortfall:.0%} below the "
                     f"scheduled {scheduled:.4g}/s (target {target:.4g}/s)")
            if spec.max_concurrency and st.slot_waits:
                # The cap sends a request only when one ends: the endpoint's pace, not the client's.
                reason = (f"{short}: {st.slot_waits} of {st.measured} requests waited for one of the "
                          f"max_concurrency={spec.max_concurrency} slots: the cap, not the client, held the rate back")
            else:
                reason = f"{short}: the client could not keep up"
                client_short = True
        elif lag99 > spec.max_send_lag_s:
            valid = False
            reason = (
                f"dispatch lag p99 {lag99 * 1e3:.2f} ms exceeds max_send_lag_s "
                f"{spec.max_send_lag_s * 1e3:.2f} ms: requests left late"
            )
        # A client that sent late makes any endpoint look slow against the schedule: no verdict then.
        verdict = (None if client_short or st.completion is None
                   else judge_overload(st.completion, spec.overload_shortfall, scheduled))
    else:
        achieved = st.measured / duration if duration > 0 else 0.0
        lag99 = 0.0
        verdict = None
    return ShardResult(
        shard_id=spec.shard_id,
        records_path=str(path),
        requests=st.measured,
        warmup=st.warm,
        errors=st.errors,
        t_first_start=st.first_start if started else None,
        t_last_end=st.last_end if started else None,
        duration_s=duration,
        achieved_rate=achieved,
        target_rate=target,
        scheduled_rate=scheduled,
        send_lag_p99_s=_p99(st.send_lags),
        dispatch_lag_p99_s=lag99,
        valid=valid,
        invalid_reason=reason,
        slot_waits=st.slot_waits,
        overloaded=verdict is not None and verdict.overloaded,
        overload_reason=verdict.reason if verdict is not None else None,
        completion_rate=verdict.completion_rate if verdict is not None else None,
        client_cpu_s=cpu_s,
        receive_stamps=stamps,
    )


async def _sleep_until(when: float) -> None:
    """Sleep until a monotonic time, precisely (coarse sleep, then yield-spin)."""
    clock = time.monotonic
    wait = when - clock()
    if wait > _SPIN_S:
        await asyncio.sleep(wait - _SPIN_S)
    while clock() < when:
        await asyncio.sleep(0)


async def _closed_loop(
    client: EndpointClient,
    shard: _Shard,
    workers: int | None = None,
    take_id: Callable[[], int] | None = None,
    t0: float | None = None,
) -> None:
    """Run ``workers`` (default: the spec's concurrency) back-to-back request loops.

    ``take_id`` hands out the next measured request id (default: a counter local to this loop,
    which then sends the shard's warm-ups first, see `warm_up`; the multi-process and multi-host
    modes pass their own, and have warmed up before ``t0``); ``t0`` is a common start time.
    """
    total = shard.total
    next_id = 0
    if take_id is None:
        await warm_up(client, shard, range(shard.spec.warmup), workers or shard.spec.concurrency)
        next_id = shard.spec.warmup

    def local_take() -> int:
        nonlocal next_id
        i = next_id
        next_id += 1
        return i

    take = take_id or local_take

    async def worker() -> None:
        while shard.halted is None and (i := take()) < total:
            await shard.run_one(client, i, None)

    if t0 is not None:
        await _sleep_until(t0)
    # (never more workers than requests: the others would find none and end at once)
    await _run_all([asyncio.create_task(worker()) for _ in range(min(workers or shard.spec.concurrency, total))])


async def warm_up(client: EndpointClient, shard: _Shard, ids: Sequence[int], workers: int) -> None:
    """Send the warm-up requests ``ids`` with up to ``workers`` in flight and wait for every one.

    A closed loop measures only once its warm-ups are done: a warm-up still in flight beside the
    measured requests would hold part of the concurrency being measured, and its time on the
    endpoint would fall inside the measured window (throughput and cost per request would read low
    and high). An open loop's warm-ups are instead the first arrivals of its schedule.
    """
    pending = iter(ids)

    async def worker() -> None:
        for i in pending:  # one iterator shared by the workers: each id is sent once
            if shard.halted is not None:
                return
            await shard.run_one(client, i, None)

    await _run_all([asyncio.create_task(worker()) for _ in range(min(workers, len(ids)))])


async def _open_loop(
    client: EndpointClient, shard: _Shard, t0: float | None = None, part: tuple[int, int] = (0, 1)
) -> None:
    """Dispatch requests at their scheduled times; with ``part=(k, n)`` only the ids ``i % n == k``."""
    spec = shard.spec
    slot = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
    tasks: set[asyncio.Task[None]] = set()
    gaps = arrival_gaps(spec)
    loop = asyncio.get_running_loop()
    clock = time.monotonic
    due = t0 if t0 is not None else clock() + _LEAD_S
    k, n = part
    try:
        for i in range(shard.total):
            if i:
                due += next(gaps)
            if i % n != k:
                continue
            await _sleep_until(due)
            if shard.halted is not None:
                break
            if i >= spec.warmup:
                shard.stats.dispatch_lags.append(clock() - due)
            task = loop.create_task(shard.run_one(client, i, due, slot))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except asyncio.CancelledError:
        await _run_all(list(tasks), cancelled=True)
        raise
    await _run_all(list(tasks))


async def report_progress(shard: _Shard, report: Callable[[int, int, float | None], None], every_s: float) -> None:
    """Call ``report(done, errors, ttft_p50_s)`` every ``every_s`` seconds until cancelled (one wake-up per call)."""
    while True:
        await asyncio.sleep(every_s)
        st = shard.stats
        report(st.measured + st.warm, st.errors, st.ttft_p50())


@dataclass(slots=True)
class ShardSession:
    """What `shard_session` cleans up besides the client: the progress reporter, once started."""

    reporter: asyncio.Future[None] | None = None


@contextlib.asynccontextmanager
async def shard_session(client: EndpointClient, writer: RecordWriter, connections: int) -> AsyncIterator[ShardSession]:
    """Open the client for ``connections`` requests in flight (0: no limit) for the body of the block.

    On the way out the client is closed and the reporter (if one was set) cancelled; when the block
    raises (a cancellation included), the partial records are discarded (``writer.abort``).
    Committing the records is the caller's, after the block.
    """
    session = ShardSession()
    try:
        await client.open(connections)
        try:
            yield session
        finally:
            await client.close()
            if session.reporter is not None:
                session.reporter.cancel()
    except BaseException:
        writer.abort()
        raise


async def _run_all(tasks: list[asyncio.Task[None]], cancelled: bool = False) -> None:
    """Wait for tasks; on cancellation cancel them all and let each record itself as cancelled."""
    try:
        if cancelled:
            raise asyncio.CancelledError
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def run_shard_async(
    client: EndpointClient,
    prompts: list[Prompt],
    spec: ShardSpec,
    out_path: str | Path,
    count_tokens: Callable[[str], int],
    progress: Progress | None = None,
) -> ShardResult:
    """Run one shard: open the client, offer the load, record every request, close the client.

    Args:
        client: an unopened endpoint client; opened for the shard's concurrency and closed after
            (open loop without ``max_concurrency`` opens it with 0, meaning no connection limit).
        prompts: the shard's prompts; request ``i`` sends ``prompts[i % len(prompts)]``.
        spec: what to run.
        out_path: local parquet path for the records; it appears only when the shard completes.
        count_tokens: counts output tokens when the server reports no usage (input tokens then
            come from ``Prompt.input_tokens``, already counted with the experiment's tokenizer).
        progress: called every `PROGRESS_EVERY_S` with the requests done so far (see `Progress`).

    Returns:
        The shard's summary; per-request detail is in ``out_path``.

    Raises:
        DatasetError: no prompts.
        StorageError: the records file cannot be written.
        ConfigError, FMBenchError: with ``spec.processes > 1``, the client cannot be pickled or a
            client process failed (see `fmbench.loadgen.multiproc`); cancelling this coroutine
            stops those processes before the cancellation propagates.
    """
    if not prompts:
        raise DatasetError(f"shard {spec.shard_id}: no prompts to send")
    if spec.processes > 1:  # the processes are driven from a thread; this loop stays free
        return await _run_processes(client, prompts, spec, out_path, count_tokens, progress)
    writer = RecordWriter(out_path)
    shard = _Shard(spec, prompts, writer, count_tokens)
    cpu0 = time.process_time()
    with frozen_heap():  # the garbage collector's pauses stay out of the requests' times
        async with shard_session(client, writer, shard.concurrency) as session:
            if progress is not None:
                session.reporter = asyncio.ensure_future(report_progress(
                    shard, lambda done, errors, ttft: progress(done, shard.total, errors, ttft), PROGRESS_EVERY_S))
            await (_open_loop(client, shard) if spec.open_loop else _closed_loop(client, shard))
    cpu = time.process_time() - cpu0
    path = writer.commit()
    return shard_result(spec, shard.stats, path, cpu, receive_stamps(client))


async def _run_processes(
    client: EndpointClient,
    prompts: list[Prompt],
    spec: ShardSpec,
    out_path: str | Path,
    count_tokens: Callable[[str], int],
    progress: Progress | None = None,
) -> ShardResult:
    """The multi-process mode, driven from a thread; cancelling this stops the child processes."""
    import threading

    from fmbench.loadgen.multiproc import run_shard_processes

    stop = threading.Event()
    job = asyncio.ensure_future(
        asyncio.to_thread(run_shard_processes, client, prompts, spec, out_path, count_tokens, stop, progress)
    )
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.gather(job, return_exceptions=True)  # the children are gone when this returns
        raise


class ShardCancelled(FMBenchError):
    """Raised when a shard is stopped from outside (its run stopped, or its caller was cancelled):
    its requests in flight were cancelled and its records are not kept."""

    @classmethod
    def with_the_run(cls, shard_id: str) -> ShardCancelled:
        """The run stopped the shard (`fmbench.interrupts.StopScope`), wherever it was measured."""
        return cls(f"shard {shard_id}: stopped with the run; its records are not kept")


def run_shard(
    client: EndpointClient,
    prompts: list[Prompt],
    spec: ShardSpec,
    out_path: str | Path,
    count_tokens: Callable[[str], int],
    progress: Progress | None = None,
    stop: StopScope | None = None,
) -> ShardResult:
    """Run one shard in a fresh event loop (callable from any thread); see `run_shard_async`.

    Args:
        stop: the run's `fmbench.interrupts.StopScope`: when the run stops, the shard cancels its
            requests in flight and raises `ShardCancelled` (its records file is not written).
    """
    if spec.processes > 1:
        if not prompts:
            raise DatasetError(f"shard {spec.shard_id}: no prompts to send")
        import threading

        from fmbench.loadgen.multiproc import run_shard_processes

        stopped = threading.Event()
        ended = stop.register(stopped.set) if stop is not None else None
        try:
            return run_shard_processes(client, prompts, spec, out_path, count_tokens, stopped, progress)
        except ShardCancelled:
            if stop is not None and stop.stopped:
                raise ShardCancelled.with_the_run(spec.shard_id) from None
            raise
        finally:
            if ended is not None:
                ended()  # the processes are gone
    try:
        return run_until_stopped(run_shard_async(client, prompts, spec, out_path, count_tokens, progress), stop)
    except Stopped:
        raise ShardCancelled.with_the_run(spec.shard_id) from None
