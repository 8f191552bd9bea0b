"""In-shard request retries (``request_retries`` > 0): every attempt is one record, the last one is the outcome.

Off by default, because retrying changes what is measured. When on, a request that fails with a
retryable kind (timeout, throttled, server_error, connection, protocol) is sent again after a
bounded backoff, at most ``retries`` more times; a ``client_error`` (the same request would fail
again) and a cancellation are never retried.

How attempts are recorded and counted:

* every attempt is a record with the same ``request_id`` and ``attempt`` = 1, 2, ...; the record
  with the highest ``attempt`` of a ``(shard_id, request_id)`` is the request's *final outcome*
  (`final_attempts` selects them);
* all attempts share the logical request's scheduled time (open loop: its due time; closed loop:
  the first attempt's start), so the final record's ``latency_s`` includes the time lost to failed
  attempts and backoffs, and its ``send_lag_s`` shows the delay;
* the engine's running statistics (`ShardResult.requests` / ``errors``) and the metrics count final
  outcomes only, so a retried request is one request; `fmbench.metrics.summarize` adds the attempts
  as the ``attempts`` column.

A request backing off holds its place: in the closed loop its worker waits with it, so while any
request backs off fewer than ``concurrency`` requests are in flight (as with a client that retries
in-line; the load the endpoint saw is what its records' start and end times say, not the nominal
concurrency). In the open loop the schedule goes on and the retry is one more request in flight.

Backoff before attempt ``k + 1``: ``min(MAX_BACKOFF_S, BASE_BACKOFF_S * 2 ** (k - 1))``, raised to
a throttled answer's ``Retry-After`` but never past ``MAX_BACKOFF_S``.

Throttling has a budget of its own, ``throttle_retries`` (the Bedrock endpoint's, 3 by default,
because a throttled request is what a Bedrock user's SDK retries too): a throttled attempt is
retried from that budget first, after ``throttle_backoff_s`` doubling per throttled attempt (capped
at ``MAX_THROTTLE_BACKOFF_S``, raised to ``Retry-After``); other retryable failures, and throttling
once that budget is spent, use ``request_retries``. The ``attempts`` metric and the error counts
show how often requests were throttled.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fmbench.errors import EndpointError
from fmbench.loadgen.engine import fill_failed
from fmbench.records import final_attempts

if TYPE_CHECKING:
    from fmbench.loadgen.engine import _Shard
    from fmbench.protocol import Completion, EndpointClient, Prompt
    from fmbench.records import RequestRecord

__all__ = ["BASE_BACKOFF_S", "MAX_BACKOFF_S", "MAX_THROTTLE_BACKOFF_S", "RETRYABLE_KINDS", "backoff_s",
           "final_attempts", "run_with_retries", "throttle_backoff_s"]

#: Error kinds worth another attempt (a client_error would fail the same way; cancelled means stop).
RETRYABLE_KINDS = frozenset({"timeout", "throttled", "server_error", "connection", "protocol"})
#: First backoff, seconds; doubles per attempt.
BASE_BACKOFF_S = 0.05
#: No backoff is longer than this, whatever the attempt or the server's Retry-After.
MAX_BACKOFF_S = 2.0
#: No backoff after throttling is longer than this.
MAX_THROTTLE_BACKOFF_S = 30.0


def backoff_s(attempt: int, retry_after_s: float | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
    delay = BASE_BACKOFF_S * 2 ** max(0, attempt - 1)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(MAX_BACKOFF_S, delay)


def throttle_backoff_s(throttled: int, first_s: float, retry_after_s: float | None = None) -> float:
    """Seconds to wait after the ``throttled``-th throttled attempt (1-based) of a request."""
    delay = first_s * 2 ** max(0, throttled - 1)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return min(MAX_THROTTLE_BACKOFF_S, delay)


async def run_with_retries(
    shard: _Shard,
    client: EndpointClient,
    i: int,
    t_sched: float | None,
    slot: asyncio.Semaphore | None,
    retries: int,
    throttle_retries: int = 0,
    throttle_first_backoff_s: float = 0.5,
) -> None:
    """Send request ``i`` up to ``retries + throttle_retries + 1`` times and record every attempt
    (engine callback).

    The final attempt goes through the shard's own ``_ok``/``_fail`` (so the shard's statistics
    see one outcome per request); earlier failed attempts are written to the records only.
    """
    prompt = shard.prompts[i % len(shard.prompts)]
    sched = t_sched  # closed loop: fixed at the first attempt's start
    throttled = general = 0  # retries spent from each budget
    for attempt in range(1, retries + throttle_retries + 2):
        rec = shard._base(i, prompt)
        rec.attempt = attempt
        t_before: float | None = None
        if attempt == 1 and slot is not None and slot.locked() and i >= shard.spec.warmup:
            shard.stats.slot_waits += 1  # (once per request: a retry's wait is its backoff's doing)
        try:
            result, t_before = await _send(client, prompt, slot)
        except _Failed as failed:
            t_before = failed.t_before
            if sched is None:
                sched = t_before
            exc = failed.cause
            if isinstance(exc, asyncio.CancelledError):
                shard._fail(rec, prompt, sched, t_before, "cancelled", "shard cancelled before the answer", None)
                raise exc from None
            if isinstance(exc, EndpointError):
                kind, message, status = exc.kind, str(exc), getattr(exc, "status", None)
                rec.resends = exc.resends
            else:
                kind, message, status = "protocol", f"unexpected {type(exc).__name__}: {exc}", None
            retry_after = getattr(exc, "retry_after_s", None)
            delay: float | None = None
            if kind == "throttled" and throttled < throttle_retries:
                throttled += 1
                delay = throttle_backoff_s(throttled, throttle_first_backoff_s, retry_after)
            elif general < retries and kind in RETRYABLE_KINDS:
                general += 1
                delay = backoff_s(general, retry_after)
            if delay is not None:
                if t_before is not None:
                    shard.first_sent.setdefault(i, t_before)
                _record_attempt(shard, rec, prompt, sched, t_before, kind, message, status)
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    rec = shard._base(i, prompt)
                    rec.attempt = attempt + 1
                    shard._fail(rec, prompt, sched, None, "cancelled", "shard cancelled before the retry", None)
                    raise
                continue
            shard._fail(rec, prompt, sched, t_before, kind, message, status)
            return
        # (closed loop, answered at the first attempt: None, so the request is timed from the client's
        # own send stamp, exactly as without retries)
        try:
            shard._ok(i, prompt, sched, result, attempt)
        except Exception as exc:  # noqa: BLE001 (a malformed Completion is one failed record)
            rec = shard._base(i, prompt)
            rec.attempt = attempt
            message = f"cannot record the answer: {type(exc).__name__}: {exc}"
            shard._fail(rec, prompt, sched, t_before, "protocol", message, None)
        return


class _Failed(Exception):
    """An attempt's exception plus when it was sent (None: never sent)."""

    def __init__(self, cause: BaseException, t_before: float | None) -> None:
        super().__init__(str(cause))
        self.cause, self.t_before = cause, t_before


async def _send(client: EndpointClient, prompt: Prompt, slot: asyncio.Semaphore | None) -> tuple[Completion, float]:
    t_before: float | None = None
    try:
        if slot is not None:
            async with slot:
                t_before = time.monotonic()
                return await client.complete(prompt), t_before
        t_before = time.monotonic()
        return await client.complete(prompt), t_before
    except BaseException as exc:
        if not isinstance(exc, (Exception, asyncio.CancelledError)):
            raise
        raise _Failed(exc, t_before) from exc


def _record_attempt(
    shard: _Shard,
    rec: RequestRecord,
    prompt: Prompt,
    sched: float | None,
    t_before: float | None,
    kind: str,
    message: str,
    status: int | None,
) -> None:
    """Write a failed, retried attempt (same fields as the engine's failed records, not counted in
    the shard's statistics: the request's outcome is its final attempt)."""
    fill_failed(rec, prompt, sched, t_before, kind, message, status)
    shard.writer.add(rec)
