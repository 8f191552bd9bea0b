"""One timer for the per-request timeouts of every request a client has in flight.

``asyncio.timeout`` arms a timer handle per request and pushes it onto the event loop's heap
(about 8 us per request, entered and left, on the development VM: a tenth of a request's client time
against a zero-latency server). A client's requests all share one timeout, so their deadlines come
in the order the requests start: `Deadlines` keeps the requests in flight in an insertion-ordered
dict and arms a single loop timer at the earliest deadline. Expiry is as exact as
``asyncio.timeout``'s: the timer fires at the front request's deadline, and the request it finds
expired is cancelled then, like ``asyncio.timeout`` does it.
"""

from __future__ import annotations

import asyncio


class Deadlines:
    """Per-request deadlines ``timeout_s`` after each `start`, with one loop timer for all.

    Usage, in the task that sends the request::

        task = deadlines.start()
        try:
            ...  # the request
        except asyncio.CancelledError:
            if deadlines.expired(task):
                ...  # raise the timeout error
            raise
        finally:
            deadlines.stop(task)
    """

    __slots__ = ("_fired", "_live", "_loop", "_timeout", "_timer")

    def __init__(self, timeout_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self._timeout = timeout_s
        self._loop = loop
        self._live: dict[asyncio.Task[object], float] = {}  # in start order, which is deadline order
        self._fired: set[asyncio.Task[object]] = set()  # cancelled by this timer, not yet told so
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> asyncio.Task[object]:
        """Start the current task's deadline; returns the task (the key of `expired` and `stop`)."""
        task = asyncio.current_task(self._loop)
        if task is None:  # pragma: no cover - complete() always runs in a task
            raise RuntimeError("a request deadline needs a running task")
        when = self._loop.time() + self._timeout
        self._live[task] = when
        if self._timer is None:
            self._timer = self._loop.call_at(when, self._sweep)
        return task

    def expired(self, task: asyncio.Task[object]) -> bool:
        """True when the CancelledError the task caught is this timer's (and only this timer's)."""
        if task not in self._fired:
            return False
        self._fired.discard(task)
        return task.uncancel() == 0  # another cancel (the shard's) still pending: not a timeout

    def stop(self, task: asyncio.Task[object]) -> None:
        """End the task's deadline (the request ended, whichever way)."""
        self._live.pop(task, None)
        if task in self._fired:  # fired as the request was ending and the cancel was swallowed
            self._fired.discard(task)
            task.uncancel()

    def close(self) -> None:
        """Drop the timer (the client is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        live = self._live
        expired = []
        for task, when in live.items():
            if when > now:
                self._timer = self._loop.call_at(when, self._sweep)
                break
            expired.append(task)
        for task in expired:
            del live[task]
            if not task.done():
                self._fired.add(task)
                task.cancel()
