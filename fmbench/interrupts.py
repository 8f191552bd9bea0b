"""How an interrupt reaches every part of a run: SIGTERM is raised like Ctrl-C in the main thread,
and deploys waiting in worker threads are interrupted too, so they delete what they created."""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from fmbench.errors import RunTerminated

log = logging.getLogger("fmbench")

_deploying: dict[int, str] = {}  # thread ident -> experiment whose deploy runs in it
_lock = threading.Lock()

#: The longest a deploy's wait sleeps in one piece: how late an interrupt may reach it.
SLEEP_SLICE_S = 0.25


def sleep(seconds: float) -> None:
    """`time.sleep` that `interrupt_deploy` reaches within `SLEEP_SLICE_S`: the interrupt lands only
    when the thread runs Python again, and a deploy polls every 15 s, so a whole sleep would keep an
    endpoint the user stopped alive (and billed), and the user waiting, for up to that long."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, SLEEP_SLICE_S))


@contextmanager
def deploying(experiment: str) -> Iterator[None]:
    """Mark the current thread as deploying the experiment's endpoint (see `interrupt_deploy`)."""
    ident = threading.get_ident()
    with _lock:
        _deploying[ident] = experiment
    try:
        yield
    finally:
        with _lock:
            _deploying.pop(ident, None)


def interrupt_deploy(experiment: str) -> bool:
    """Raise KeyboardInterrupt in the worker thread deploying the experiment, as Ctrl-C would in
    the main thread, so the deployer's own clean-up runs. Returns False when no thread of this
    process deploys it (done already, in the main thread, or in another process).

    The exception arrives when the thread next runs Python code, so deployers wait with `sleep`.
    """
    main = threading.main_thread().ident
    with _lock:
        for ident, name in _deploying.items():
            if name == experiment and ident != main:
                hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                                 ctypes.py_object(KeyboardInterrupt))
                return bool(hit)
    return False


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM raises `RunTerminated` in the main thread; the previous
    handler is restored afterwards.

    Left alone when not in the main thread, or when a handler is already installed (Prefect's
    flow engine installs one that raises its own termination exception, which the run's
    clean-up catches the same way).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise RunTerminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
