"""A run's SageMaker resources say that their run is in progress, from any host.

Every resource a run creates carries two more tags besides its identity (`fmbench.deploy.sagemaker.
fmbench_tags`): ``fmbench:host``, the host of the run, and ``fmbench:live-until``, a UTC time a few
renewals ahead. While the run is in progress, one thread of its process moves ``live-until``
forward every `renew_s` seconds; when the run ends (its endpoint deleted, or kept past the run) the
renewals stop, and a kept resource's ``live-until`` is set to the end. A run killed by any means
renews nothing, so its resources read as not in progress `LAPSE_RENEWALS` renewals later.

`fmbench cleanup` reads these tags, with the host's own lock of a run on this host
(`fmbench.rundir.live_on_this_host`), to leave the resources of a run in progress alone.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

TAG_HOST = "fmbench:host"
TAG_LIVE_UNTIL = "fmbench:live-until"

#: ``live-until`` is this many renewals ahead: a renewal or two may fail (throttled, a network blip)
#: without the run reading as ended.
LAPSE_RENEWALS = 5


def renew_s() -> float:
    """Seconds between two renewals (``FMBENCH_LIVE_RENEW_S``, default 60; 0 is the default too)."""
    from fmbench.settings import number

    return number("FMBENCH_LIVE_RENEW_S", 60.0) or 60.0


def _iso(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).isoformat(timespec="seconds")


def this_host() -> str:
    """This host's name as the ``fmbench:host`` tag holds it."""
    return platform.node()[:256]


def live_tags(now: _dt.datetime | None = None) -> list[dict[str, str]]:
    """The tags that say a resource's run is in progress on this host, as of ``now``."""
    now = now or _dt.datetime.now(_dt.UTC)
    until = now + _dt.timedelta(seconds=LAPSE_RENEWALS * renew_s())
    return [{"Key": TAG_HOST, "Value": this_host()}, {"Key": TAG_LIVE_UNTIL, "Value": _iso(until)}]


def live_until(tags: dict[str, str]) -> _dt.datetime | None:
    """When a resource's run last said it would still be in progress (None: never said, or unreadable)."""
    text = tags.get(TAG_LIVE_UNTIL)
    if not text:
        return None
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


class _Heartbeats:
    """The resources this process's runs created and still hold, and the thread that renews them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str, str], tuple[Any, str]] = {}  # (run id, kind, name) -> (client, arn)
        self._thread: threading.Thread | None = None
        # Held around each tag write: a run's end mark is written after any renewal in flight, never
        # before one that would move it forward again.
        self._writing = threading.Lock()

    def add(self, run_id: str, kind: str, name: str, client: Any, arn: str | None) -> None:
        """Renew the tags of ``kind:name`` (``arn``) while run ``run_id`` holds it."""
        if not arn:
            return
        with self._lock:
            self._held[(run_id, kind, name)] = (client, arn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._renew_loop, name="fmbench-heartbeat", daemon=True)
                self._thread.start()

    def discard(self, kind: str, name: str) -> None:
        """``kind:name`` is deleted (or being deleted): nothing to renew."""
        with self._lock:
            for key in [k for k in self._held if k[1:] == (kind, name)]:
                del self._held[key]

    def end(self, run_id: str) -> None:
        """Run ``run_id`` ended: stop renewing its resources, and mark those still there (kept past
        the run) as no longer in progress."""
        with self._lock:
            left = {k: v for k, v in self._held.items() if k[0] == run_id}
            for key in left:
                del self._held[key]
        for (_, kind, name), (client, arn) in left.items():
            try:
                with self._writing:
                    client.add_tags(ResourceArn=arn, Tags=[{"Key": TAG_LIVE_UNTIL,
                                                            "Value": _iso(_dt.datetime.now(_dt.UTC))}])
            except Exception as exc:  # noqa: BLE001 - it lapses by itself within LAPSE_RENEWALS renewals
                log.debug("could not mark %s %s as ended: %s", kind, name, exc)

    def renew_now(self) -> None:
        """One renewal of every held resource (the thread's step)."""
        from fmbench.deploy.sagemaker import _not_found

        with self._lock:
            held = list(self._held.items())
        tags = live_tags()
        for key, (client, arn) in held:
            run_id, kind, name = key
            try:
                with self._writing:
                    with self._lock:
                        if key not in self._held:  # (ended meanwhile: its end mark stays)
                            continue
                    client.add_tags(ResourceArn=arn, Tags=tags)
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                if _not_found(exc):  # deleted meanwhile (by its teardown, or by hand)
                    self.discard(kind, name)
                else:
                    log.debug("run %s: could not renew the tags of %s %s: %s", run_id, kind, name, exc)

    def _renew_loop(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(min(renew_s(), 1.0))  # (the period is read again each second)
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
            if time.monotonic() - last >= renew_s():
                last = time.monotonic()
                self.renew_now()


HEARTBEATS = _Heartbeats()


def end_heartbeats(run_id: str) -> None:
    """Run ``run_id`` ended in this process (`HEARTBEATS.end`)."""
    HEARTBEATS.end(run_id)
