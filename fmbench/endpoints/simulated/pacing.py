"""Timers that fire a callback in the event loop at an absolute ``time.monotonic()`` deadline.

The simulated server paces every chunk against its absolute due time, so errors never add up
over a stream; what remains is how late one wake-up is. Two timers:

* `LoopTimer` uses ``loop.call_at``. asyncio rounds the poll timeout up to whole milliseconds,
  so a wake-up is typically 0-1 ms late.
* `ThreadTimer` waits in a helper thread (sub-millisecond sleeps) and hands over to the loop
  with ``call_soon_threadsafe``, which wakes the loop's selector at once. This is the default.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A one-shot, re-armable timer calling back in the event loop."""

    def set(self, deadline: float | None) -> None:
        """Arm for ``deadline`` (monotonic seconds), replacing any earlier arming; None disarms."""

    def close(self) -> None:
        """Disarm for good and release resources."""


class LoopTimer:
    """A timer on ``loop.call_at`` (millisecond granularity)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

    def set(self, deadline: float | None) -> None:
        if deadline == self._deadline and self._handle is not None:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._deadline = deadline
        if deadline is not None:
            # loop.time() need not share time.monotonic()'s origin (uvloop), so convert.
            when = deadline - time.monotonic() + self._loop.time()
            self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._deadline = None
        self._callback()

    def close(self) -> None:
        self.set(None)


class ThreadTimer:
    """A timer that sleeps in a helper thread and wakes the loop with ``call_soon_threadsafe``.

    Args:
        loop: the loop the callback runs in.
        callback: called in the loop once the deadline has passed.
        spin_s: the last part of a wait is spent yielding in a short-sleep loop rather than in
            one condition wait, which overshoots by the kernel's timer slack (~50-100 µs).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None], spin_s: float = 0.0003
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._spin_s = spin_s
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fmbench-sim-timer", daemon=True)
        self._thread.start()

    def set(self, deadline: float | None) -> None:
        with self._cond:
            if deadline == self._deadline:
                return
            self._deadline = deadline
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                if self._closed:
                    return
                deadline = self._deadline
                if deadline is None:
                    cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining > self._spin_s:
                    cond.wait(remaining - self._spin_s)
                    continue  # re-read: the deadline may have moved
            while (remaining := deadline - time.monotonic()) > 0:
                time.sleep(min(remaining, 0.00005))
            with cond:
                if self._deadline != deadline or self._closed:
                    continue  # re-armed meanwhile; serve the new deadline
                self._deadline = None
            try:
                self._loop.call_soon_threadsafe(self._callback)
            except RuntimeError:  # loop closed under us: nothing left to wake
                return
