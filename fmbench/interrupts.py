"""How an interrupt reaches every part of a run: SIGTERM and SIGHUP are raised like Ctrl-C in the main thread,
and deploys waiting in worker threads are interrupted too, so they delete what they created."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import FrameType
from typing import IO, Any, TypeVar

from fmbench.errors import DeploymentError, RunTerminated

log = logging.getLogger("fmbench")
T = TypeVar("T")

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


def interrupt_deploy(experiment: str, exc: type[BaseException] = KeyboardInterrupt) -> bool:
    """Raise ``exc`` (KeyboardInterrupt: as Ctrl-C would in the main thread) in the worker thread
    deploying the experiment, so the deployer's own clean-up runs. Returns False when no thread of
    this process deploys it (done already, in the main thread, or in another process).

    The exception arrives when the thread next runs Python code, so deployers wait with `sleep`.
    """
    main = threading.main_thread().ident
    with _lock:
        for ident, name in _deploying.items():
            if name == experiment and ident != main:
                hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
                return bool(hit)
    return False


class DeployStopped(DeploymentError):
    """Raised in a thread deploying on a Dask worker when the run stops (`stop_deploy_here`): the
    deployer deletes what it created, as it does on Ctrl-C in the run's own process. An error, not
    an interrupt, so that the worker's own machinery treats it as the task's failure."""

    def __init__(self, message: str = "stopped with the run") -> None:
        super().__init__(message)


@contextmanager
def termination_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise `RunTerminated` in the main thread, as Ctrl-C
    raises KeyboardInterrupt, so a run deletes what it created however it is stopped; the previous
    handlers are restored afterwards (but after a hang-up SIGHUP stays ignored).

    SIGTERM is left alone when a handler is already installed (Prefect's flow engine installs one
    that raises its own termination exception, which the run's clean-up catches the same way), and
    SIGHUP when it is not the default (``nohup`` ignores it: the run goes on). Nothing is installed
    outside the main thread.

    SIGHUP is what a run gets when its terminal goes away (an SSH session dropped, the window
    closed), and by default it ends the process on the spot: endpoints billing, local servers
    orphaned. It is handled once: a hang-up often brings a second SIGHUP (the kernel's to the
    foreground job, the shell's to each of its jobs), which must not cut the clean-up short. A
    standard stream that was a terminal and no longer is one (hung up: every write would fail) is
    pointed at ``/dev/null`` first, so the clean-up's messages cannot fail it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, object] = {}

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise RunTerminated("terminated (SIGTERM)", signal.SIGTERM)

    ttys = [fd for fd in (1, 2) if _isatty(fd)]
    hung: list[bool] = []

    def hang_up(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # once, and ignored to the process's end: see above
        hung.append(True)
        _drop_hung_up(ttys)
        raise RunTerminated("hung up (SIGHUP)", signal.SIGHUP)

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, terminate)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hang_up)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if not (signum == signal.SIGHUP and hung):
                signal.signal(signum, handler)  # type: ignore[arg-type]


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:  # pragma: no cover - a closed descriptor
        return False


def _drop_hung_up(ttys: list[int]) -> None:
    """Point each of ``ttys`` that is no longer a terminal (it hung up; or a pipe nobody reads) at
    ``/dev/null``."""
    for fd in ttys:
        if not _isatty(fd):
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, fd)
                finally:
                    os.close(null)
            except OSError:  # pragma: no cover - nothing better to do with a stream that is gone
                pass


def say(line: str, stream: IO[str] | None = None) -> None:
    """Print one line of a command's output (to stdout unless ``stream``); when nobody can read that
    stream any more (a terminal that hung up, a pipe whose reader exited), point it at ``/dev/null``
    instead of failing.

    A run started with SIGHUP ignored (``nohup``, ``disown``, a shell that ignores it) rightly goes
    on when its terminal goes away, and must end as it would have: a write to the terminal that is
    gone fails (EIO), and the line that says where the report is would otherwise turn a finished
    run into an error. Likewise ``fmbench run ... | head``, or a ``cleanup`` whose listing is cut
    short (EPIPE): what the command does (delete endpoints, measure, write the report) matters more
    than the lines nobody reads. Any other failure to write (a full disk) is raised.
    """
    stream = sys.stdout if stream is None else stream
    try:
        print(line, file=stream, flush=True)
    except OSError as exc:
        try:
            fd = stream.fileno()
        except (OSError, ValueError):
            raise exc from None
        if not (exc.errno == errno.EPIPE or exc.errno == errno.EIO and not _isatty(fd)):
            raise
        _drop_hung_up([fd])
        try:
            stream.flush()  # what the failed write left buffered goes where the line went
        except (OSError, ValueError):
            pass


#: How long a stopping run waits for its shards to stop before it deletes their endpoints anyway.
STOP_WAIT_S = 15.0


class StopScope:
    """The work of one run in flight right now (shards, judge calls), to be stopped when the run stops.

    A run that is interrupted (or fails) deletes its endpoints; a shard still measuring in another
    thread would go on sending to an endpoint being deleted and record the failures as the
    endpoint's, then be kept as measured (a resumed run would report them). The run stops its
    shards first (`stop`), and waits for them: each one cancels its requests, keeps no records and
    is measured again on resume. Work registering after the stop is stopped at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._stops: dict[int, Callable[[], object]] = {}
        self._stopping: set[int] = set()  # told to stop, not yet ended
        self._next = 0
        self.stopped = False
        #: The Dask Event that carries this scope's stop to work running on a cluster's workers
        #: (`reach_workers`, `worker_stop_scope`); one per scope, so an old run's stop stops nothing new.
        self.event_name = f"fmbench-stop-{uuid.uuid4().hex}"

    def register(self, stop: Callable[[], object]) -> Callable[[], None]:
        """Call ``stop`` (from the stopping thread) when the run stops; returns the call that says the
        work has ended (always make it, stopped or not: the stopping run waits for it)."""
        with self._cond:
            key = self._next
            self._next += 1
            late = self.stopped
            if not late:
                self._stops[key] = stop
        if late:
            _call(stop)

        def ended() -> None:
            with self._cond:
                self._stops.pop(key, None)
                self._stopping.discard(key)
                self._cond.notify_all()

        return ended

    def stop(self, wait_s: float = STOP_WAIT_S) -> int:
        """Stop all registered work (and any that registers later), and wait up to ``wait_s`` for it
        to end; how many were running."""
        with self._cond:
            self.stopped = True
            stops, self._stops = self._stops, {}
            self._stopping.update(stops)
        for stop in stops.values():
            _call(stop)
        with self._cond:
            if not self._cond.wait_for(lambda: not self._stopping, timeout=wait_s):
                log.warning("%d shard(s) or judge call(s) still running %.0f s after the run stopped them; their "
                            "endpoints are deleted anyway", len(self._stopping), wait_s)
        return len(stops)


def _call(stop: Callable[[], object]) -> None:
    try:
        stop()
    except Exception:  # work that ended meanwhile (its loop closed) needs no stop
        log.debug("stopping work in flight failed", exc_info=True)


class Stopped(Exception):
    """Raised by `run_until_stopped` when the run stopped the work."""


def run_until_stopped(work: Coroutine[Any, Any, T], stop: StopScope | None) -> T:
    """``asyncio.run(work)`` in this thread; when ``stop`` stops, ``work`` is cancelled (from the
    stopping thread, which waits for it to end) and `Stopped` is raised."""
    if stop is None:
        return asyncio.run(work)
    try:
        return asyncio.run(_until_stopped(work, stop))
    except asyncio.CancelledError:
        if stop.stopped:
            raise Stopped from None
        raise


async def _until_stopped(work: Coroutine[Any, Any, T], stop: StopScope) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    ended = stop.register(lambda: loop.call_soon_threadsafe(task.cancel))
    try:
        return await work
    finally:
        ended()


_scope: ContextVar[StopScope | None] = ContextVar("fmbench_stop_scope", default=None)


@contextmanager
def stop_scope(scope: StopScope) -> Iterator[StopScope]:
    """Make ``scope`` the run's for the block: seen (`current_stop_scope`) by the code it runs,
    including the threads and Prefect tasks started from it with a copy of its context."""
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_stop_scope() -> StopScope | None:
    """The run's `StopScope`, where this code runs inside one."""
    return _scope.get()


# ---------------------------------------------------------------- work on a Dask cluster's workers

#: How long a worker's watch waits on the run's stop Event in one call (the set reaches it at once).
_WORKER_WAIT_S = 1.0


def reach_workers(scope: StopScope, client: Any) -> tuple[str, Callable[[], None]]:
    """Register one step submitted to a Dask cluster (``client``) in the run's ``scope``, which the
    contextvars do not reach there: its stop sets a Dask Event that the step's `worker_stop_scope`
    watches. Returns the Event's name (give it to the step) and the call that says the step ended
    (make it when its future is done: the stopping run waits for that)."""
    from distributed import Event

    event = Event(scope.event_name, client=client)
    return scope.event_name, scope.register(event.set)


@contextmanager
def worker_stop_scope(event_name: str | None) -> Iterator[StopScope | None]:
    """Inside a task on a Dask worker: for the block, a stop scope of its own is the current one
    (`current_stop_scope`), stopped when the run sets the Event ``event_name`` (`reach_workers`);
    yields it. Nothing changes (None) without a name, where a scope is current already, or outside
    a worker."""
    if event_name is None or _scope.get() is not None:
        yield None
        return
    try:
        from distributed import Event, get_client, get_worker

        get_worker()  # in a task on a worker (a Dask client of this process does not make it one)
        event = Event(event_name, client=get_client())  # the worker's client: found from the task's own thread
    except (ImportError, ValueError):  # not on a Dask worker
        yield None
        return
    scope = StopScope()
    over = threading.Event()

    def watch() -> None:
        while not over.is_set():
            try:
                if event.wait(timeout=_WORKER_WAIT_S):
                    scope.stop()
                    return
            except Exception:
                log.debug("cannot watch the run's stop", exc_info=True)
                over.wait(_WORKER_WAIT_S)

    threading.Thread(target=watch, name="fmbench-stop-watch", daemon=True).start()
    try:
        with stop_scope(scope):
            yield scope
    finally:
        over.set()


@contextmanager
def stop_deploy_here(experiment: str, event_name: str | None) -> Iterator[None]:
    """Around a deploy: on a Dask worker (``event_name``, see `worker_stop_scope`), the run's stop
    interrupts it in this process with `DeployStopped`, which the run's own process cannot do
    there (`interrupt_deploy` reaches only its own threads). Elsewhere nothing changes."""
    with worker_stop_scope(event_name) as scope:
        if scope is None:
            yield
            return
        ended = scope.register(lambda: interrupt_deploy(experiment, DeployStopped))
        try:
            yield
        finally:
            ended()
