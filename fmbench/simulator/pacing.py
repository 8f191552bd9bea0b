"""Timers that fire a callback in the event loop at an absolute ``time.monotonic()`` deadline.

The simulated server paces every chunk against its absolute due time, so errors never add up
over a stream; what remains is how late one wake-up is. Three timers:

* `TimerFdTimer` (Linux, the default): a kernel ``timerfd`` armed at the absolute
  ``CLOCK_MONOTONIC`` deadline (the clock of ``time.monotonic()``) and watched by the loop's
  selector, so the loop wakes within microseconds, with no thread and no GIL hand-over, and
  one syscall per wake (the re-arm).
* `LoopTimer` uses ``loop.call_at``. asyncio rounds the poll timeout up to whole milliseconds,
  so an idle loop wakes 0-1 ms late.
* `ThreadTimer` waits in a helper thread and hands over with ``call_soon_threadsafe``; precise
  when idle, but the GIL hand-over costs the loop under load.

`make_timer` picks the first that works.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

TimerKind = Literal["timerfd", "loop", "thread"]


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


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1
_FIRED = math.nan  # a TimerFdTimer's deadline after it fired and before it is set again (never equal)


class TimerFdTimer:
    """A timer on a Linux ``timerfd`` armed at an absolute ``CLOCK_MONOTONIC`` time.

    Raises:
        OSError: not Linux, or the timerfd calls are unavailable.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError("timerfd needs Linux")
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        # No argtypes: the arguments are plain ints, a pointer and NULL, and ctypes' per-call
        # conversion through argtypes is most of the cost of a re-arm (once per decode step).
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self._fd = fd
        self._loop = loop
        self._callback = callback
        self._deadline: float | None = None
        self._spec = _Itimerspec()
        self._value = self._spec.it_value  # a view into _spec, made once
        self._spec_ref = ctypes.byref(self._spec)
        loop.add_reader(fd, self._on_readable)

    def set(self, deadline: float | None) -> None:
        if deadline == self._deadline or self._fd < 0:
            return
        self._deadline = deadline
        value = self._value
        if deadline is None:
            value.tv_sec = value.tv_nsec = 0  # disarm
        else:
            # An absolute time already past fires at once; zero would disarm, so use 1 ns.
            ns = max(1, int(deadline * 1e9))
            value.tv_sec, value.tv_nsec = divmod(ns, 1_000_000_000)
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def _on_readable(self) -> None:
        # Arming or disarming with timerfd_settime clears an expiry, so the fd need not be read
        # (a syscall per wake): the callback re-arms, and if it does not, the timer is disarmed
        # here. A wake whose expiry a re-arm already cleared only runs the callback early, which
        # finds nothing due.
        self._deadline = _FIRED
        try:
            self._callback()
        finally:
            if self._deadline is _FIRED:
                self.set(None)

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


def make_timer(
    loop: asyncio.AbstractEventLoop, callback: Callable[[], None], kind: TimerKind = "timerfd"
) -> Timer:
    """The requested timer; ``"timerfd"`` falls back to ``"loop"`` where timerfd is unavailable."""
    if kind == "timerfd":
        try:
            return TimerFdTimer(loop, callback)
        except (OSError, AttributeError):
            return LoopTimer(loop, callback)
    if kind == "thread":
        return ThreadTimer(loop, callback)
    return LoopTimer(loop, callback)
