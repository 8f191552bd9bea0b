"""What a running benchmark is doing, as a thread-safe snapshot: each shard's state, requests done,
errors, request rate and TTFT p50, each deploy's wait, and the run's ETA.

The library reports into whatever `RunProgress` is being watched in this process (`watch`); with
none, reporting costs nothing. Views (`fmbench.live`: a rich live table on a terminal, plain
periodic lines elsewhere, a notebook) read `RunProgress.snapshot`. A step on a Dask worker reports
in the worker's process; under `to_run` its reports also go, as Dask events, to the run's process,
where `from_workers` makes them in the run's watches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

#: Shard states, in the order a shard goes through them ("cached": measured by an earlier attempt).
SHARD_STATES = ("pending", "running", "done", "cached", "failed")


@dataclass(frozen=True)
class ShardProgress:
    """One shard as last reported."""

    shard_id: str
    experiment: str
    total: int = 0
    state: str = "pending"
    done: int = 0
    errors: int = 0
    ttft_p50_s: float | None = None
    started: float | None = None  # time.monotonic()
    updated: float | None = None
    ended: float | None = None
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Requests per second since the shard started (None before it has any)."""
        if self.started is None or not self.done:
            return None
        end = self.ended or self.updated or time.monotonic()
        return self.done / (end - self.started) if end > self.started else None


@dataclass(frozen=True)
class DeployProgress:
    """One experiment's deploy: since when it waits, and the provider's last reported status."""

    experiment: str
    provider: str
    started: float
    status: str = "deploying"
    ended: float | None = None
    failed: bool = False

    def elapsed_s(self, now: float | None = None) -> float:
        """Seconds the deploy has waited (until it ended)."""
        return (self.ended or now or time.monotonic()) - self.started


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of the run's progress at one moment."""

    run_id: str | None
    started: float
    shards: list[ShardProgress]
    deploys: list[DeployProgress]
    now: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        """Shards that ended (done, cached or failed)."""
        return sum(s.state in ("done", "cached", "failed") for s in self.shards)

    def eta_s(self) -> float | None:
        """Seconds left, from the request rate of the shards measured so far (None before any)."""
        measured = [s for s in self.shards if s.state in ("running", "done") and s.started is not None]
        sent = sum(s.done for s in measured)
        if not measured or not sent:
            return None
        first = min(s.started for s in measured if s.started is not None)
        rate = sent / max(self.now - first, 1e-9)
        left = sum(s.total - s.done for s in self.shards if s.state in ("pending", "running"))
        return left / rate if rate > 0 else None


class RunProgress:
    """The progress of one run, updated from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.run_id: str | None = None
        self.started = time.monotonic()
        self._shards: dict[str, ShardProgress] = {}
        self._deploys: dict[str, DeployProgress] = {}

    def snapshot(self) -> Snapshot:
        """A copy to render from."""
        with self._lock:
            return Snapshot(self.run_id, self.started, list(self._shards.values()), list(self._deploys.values()))

    def _shard(self, shard_id: str, **changes: Any) -> None:
        with self._lock:
            current = self._shards.get(shard_id) or ShardProgress(shard_id, changes.get("experiment", ""))
            self._shards[shard_id] = replace(current, **changes)

    def _deploy(self, experiment: str, **changes: Any) -> None:
        with self._lock:
            current = self._deploys.get(experiment)
            if current is None:
                current = DeployProgress(experiment, changes.pop("provider", "?"), time.monotonic())
            self._deploys[experiment] = replace(current, **changes)


_watched: list[RunProgress] = []
_watched_lock = threading.Lock()
_local = threading.local()


@contextmanager
def watch() -> Iterator[RunProgress]:
    """Collect the progress of what runs in this process while the block runs."""
    tracker = RunProgress()
    with _watched_lock:
        _watched.append(tracker)
    try:
        yield tracker
    finally:
        with _watched_lock:
            _watched.remove(tracker)


def _each() -> list[RunProgress]:
    with _watched_lock:
        return list(_watched)


# ---------------------------------------------------------------- what the library reports


#: Where the reports of this context also go (`to_run`: a step on a Dask worker sends them to the run).
_forward: ContextVar[Callable[[list[Any]], None] | None] = ContextVar("fmbench_progress_forward", default=None)
log = logging.getLogger("fmbench")


def _forwarded(*msg: Any) -> None:
    send = _forward.get()
    if send is not None:
        try:
            send(list(msg))
        except Exception:  # a progress display must never fail the work it shows
            log.debug("could not send a progress report to the run", exc_info=True)


def run_planned(run_id: str, shards: list[Any]) -> None:
    """The run's shards are known (``ShardSpec``s): each starts pending."""
    for tracker in _each():
        tracker.run_id = run_id
        for spec in shards:
            tracker._shard(spec.shard_id, experiment=spec.experiment, total=spec.warmup + spec.requests)


def shard_started(shard_id: str, total: int) -> None:
    """A shard starts sending ``total`` requests (warm-ups included)."""
    _forwarded("shard_started", shard_id, total)
    now = time.monotonic()
    for tracker in _each():
        tracker._shard(shard_id, state="running", total=total, done=0, errors=0, started=now, updated=now)


def shard_progressed(shard_id: str, done: int, total: int, errors: int, ttft_p50_s: float | None) -> None:
    """A running shard's requests so far (the load generator's progress callback)."""
    _forwarded("shard_progressed", shard_id, done, total, errors, ttft_p50_s)
    for tracker in _each():
        tracker._shard(shard_id, done=done, total=total, errors=errors, ttft_p50_s=ttft_p50_s,
                       updated=time.monotonic())


def shard_ended(shard_id: str, experiment: str, status: str, requests: int = 0, errors: int = 0,
                cached: bool = False, error: str | None = None) -> None:
    """A shard ended: ``status`` ok or failed; ``cached`` when an earlier attempt measured it."""
    state = "failed" if status == "failed" else ("cached" if cached else "done")
    now = time.monotonic()
    for tracker in _each():
        with tracker._lock:
            current = tracker._shards.get(shard_id)
        total = current.total if current else 0
        changes: dict[str, Any] = {"experiment": experiment, "state": state, "ended": now, "error": error}
        if state != "failed":  # everything was sent: done counts the warm-ups too, as while running
            changes.update(done=total or requests, errors=errors)
        tracker._shard(shard_id, **changes)


@contextmanager
def deploy_scope(experiment: str, provider: str) -> Iterator[None]:
    """The current thread deploys ``experiment``: `deploy_status` calls in it are about that deploy."""
    _forwarded("deploy_started", experiment, provider)
    for tracker in _each():
        tracker._deploy(experiment, provider=provider)
    _local.experiment = experiment
    try:
        yield
    except BaseException:
        _local.experiment = None
        deploy_ended(experiment, ok=False)
        raise
    _local.experiment = None
    # Said where the deploy ran: a deploy started ahead ends long before the run takes its endpoint.
    deploy_ended(experiment, ok=True)


def deploy_status(status: str) -> None:
    """The provider's status of the endpoint the current thread waits for (e.g. SageMaker Creating)."""
    experiment = getattr(_local, "experiment", None)
    if experiment is None:
        return
    _forwarded("deploy_status", experiment, status)
    _deploy_status(experiment, status)


def _deploy_status(experiment: str, status: str) -> None:
    for tracker in _each():
        tracker._deploy(experiment, status=status)


def deploy_ended(experiment: str, ok: bool) -> None:
    """A deploy finished (InService, or failed); said again with the same outcome, nothing changes."""
    _forwarded("deploy_ended", experiment, ok)
    for tracker in _each():
        with tracker._lock:
            current = tracker._deploys.get(experiment)
        if current is not None and (current.ended is None or current.failed == ok):
            tracker._deploy(experiment, status="ready" if ok else "failed", ended=time.monotonic(), failed=not ok)


# ---------------------------------------------------------------- steps on Dask workers


def _topic(name: str) -> str:
    return f"{name}-progress"


@contextmanager
def to_run(name: str | None) -> Iterator[None]:
    """Inside a step on a Dask worker: what it reports (a shard's start and requests, a deploy's
    status) also goes to the run's process, as Dask events under ``name`` (the name the run gave the
    step: its `fmbench.interrupts.StopScope.event_name`; the run listens with `from_workers`).
    Elsewhere (no name, not on a worker) nothing changes."""
    if name is None:
        yield
        return
    try:
        from distributed import get_worker

        worker = get_worker()  # a Dask client in this process does not make it a worker
    except (ImportError, ValueError):
        yield
        return
    topic = _topic(name)
    token = _forward.set(lambda msg: worker.log_event(topic, msg))  # thread-safe; batched to the scheduler
    try:
        yield
    finally:
        _forward.reset(token)


_listening: set[str] = set()
_listening_lock = threading.Lock()


def from_workers(client: Any, name: str) -> None:
    """Make the reports that steps on ``client``'s cluster send under ``name`` (`to_run`) in this
    process's watches, as if the steps ran here. Once per name; the subscription ends with the client."""
    topic = _topic(name)
    with _listening_lock:
        if topic in _listening:
            return
        _listening.add(topic)
    client.subscribe_topic(topic, lambda event: _replay(event[1]))


def stop_following(client: Any, name: str) -> None:
    """The run is over: stop `from_workers` under ``name`` and have the scheduler drop the events it
    kept of it (up to 1,000 a topic, which a long-lived cluster would keep for every run)."""
    topic = _topic(name)
    with _listening_lock:
        if topic not in _listening:
            return
        _listening.discard(topic)
    client.unsubscribe_topic(topic)
    forget_events(client, topic)


def forget_events(client: Any, topic: str) -> None:
    """Have the scheduler of ``client``'s cluster drop the events it keeps under ``topic`` (up to 1,000; a
    long-lived scheduler would keep them for good)."""
    client.run_on_scheduler(_truncate_topic, topic)


def _truncate_topic(topic: str, dask_scheduler: Any = None) -> None:
    # On the scheduler. distributed has no public call for it; where its broker differs, nothing is dropped.
    truncate = getattr(getattr(dask_scheduler, "_broker", None), "truncate", None)
    if callable(truncate):
        truncate(topic)


def _replay(msg: Any) -> None:
    """One report from a worker (``[kind, *args]``), in the client's event loop thread."""
    try:
        kind, *args = msg
        if kind in ("shard_started", "shard_progressed"):
            if _shard_ended(args[0]):  # late: the run has the shard's outcome already
                return
            (shard_started if kind == "shard_started" else shard_progressed)(*args)
        elif kind == "deploy_ended":
            deploy_ended(*args)
        elif kind in ("deploy_started", "deploy_status"):
            experiment, value = args
            for tracker in _each():
                with tracker._lock:
                    current = tracker._deploys.get(experiment)
                if current is not None and current.ended is not None:
                    continue  # late: the run knows how the deploy ended
                if kind == "deploy_started":
                    tracker._deploy(experiment, provider=value)
                else:
                    tracker._deploy(experiment, status=value)
    except Exception:  # a malformed report costs the display, never the run
        log.debug("cannot show a progress report from a worker: %r", msg, exc_info=True)


def _shard_ended(shard_id: str) -> bool:
    for tracker in _each():
        with tracker._lock:
            current = tracker._shards.get(shard_id)
        if current is not None and current.state in ("done", "cached", "failed"):
            return True
    return False
