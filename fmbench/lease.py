"""A hold on a run stored in S3 that every host sees: a lease object, renewed while the run goes on.

A local run is held with the kernel's lock (`fmbench.rundir.hold_run`), which ends with the process
however it ends. Another host cannot see that lock, so a run in ``s3://`` is also held by an object
beside the run directory, ``<output>/<name>/.fmbench-holds/<run_id>.json``, written with S3's
conditional writes: created only if absent (``If-None-Match: *``), renewed and taken over only if
unchanged since it was read (``If-Match``). Its age is S3's own time (the object's Last-Modified
against the Date of the answer), so the hosts' clocks never enter. A hold whose process stopped
renewing it for its ``ttl_s`` lapses; one left by a dead process of this host is taken at once.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import platform
import posixpath
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fmbench import storage
from fmbench.errors import ConfigError, RunInProgress, StorageError
from fmbench.settings import number

log = logging.getLogger("fmbench")

#: Seconds a held run stays held after its process last renewed the hold (FMBENCH_RUN_HOLD_S).
HOLD_S = 60.0
_ATTEMPTS = 4  # reads and writes raced by another taker before giving up
_SWEEP_MAX = 200  # holds beside a run looked at when it starts (a benchmark rarely has more runs at once)


def hold_seconds() -> float:
    """How long a hold outlives its last renewal (``FMBENCH_RUN_HOLD_S``, default `HOLD_S`)."""
    return max(1.0, number("FMBENCH_RUN_HOLD_S", HOLD_S))


def lease_url(run_url: str) -> str:
    """Where the hold of run ``run_url`` lives: outside the run directory, under a name that is
    never listed as a run (it starts with a dot)."""
    parent, run_id = posixpath.split(run_url.rstrip("/"))
    return storage.join(parent, ".fmbench-holds", f"{run_id}.json")


class _Conflict(Exception):
    """The store refused a conditional write or delete: the object is not as it was read."""


class _Missing(Exception):
    """A conditional write found no object to compare with (S3: 404 NoSuchKey)."""


def _answer(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and error code of a failed S3 call (s3fs keeps botocore's error as the cause)."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            return (status if isinstance(status, int) else None), (code if isinstance(code, str) else None)
    return None, None


def _s3_now(answer: dict[str, Any]) -> datetime:
    """S3's own time when it answered (its Date header), against which its LastModified stamps are
    aged; this host's clock only when the header is missing."""
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return email.utils.parsedate_to_datetime(date) if date else datetime.now(UTC)


class RunLease:
    """The S3 hold of one run, taken by `acquire` and given back by `release`; a thread renews it.

    Args:
        run_url: the run directory (``s3://...``).
        run_id: for messages.
        ttl_s: how long the hold outlives its last renewal (default `hold_seconds`).
    """

    def __init__(self, run_url: str, run_id: str, ttl_s: float | None = None) -> None:
        self.url = lease_url(run_url)
        self.run_id = run_id
        self.ttl_s = hold_seconds() if ttl_s is None else ttl_s
        #: Set when another process took the hold over (this one had not renewed it in time): why the
        #: run stopped (`fmbench.rundir.RunHold.check`).
        self.lost: str | None = None
        #: Called (from the renewing thread) once the hold is lost: the run stops measuring.
        self.on_lost: Callable[[], object] | None = None
        self._fs, path = storage.filesystem(self.url)
        self._bucket, self._key = path.split("/", 1)
        self._token = secrets.token_hex(8)
        self._renewals = 0
        self._etag: str | None = None
        self._written_at = 0.0  # time.monotonic() of its last write that S3 accepted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        # The renewal count makes every renewal a new object (ETag), so a taker's If-Match never
        # matches a hold renewed since it was read.
        return json.dumps({"pid": os.getpid(), "host": platform.node(), "token": self._token,
                           "ttl_s": self.ttl_s, "renewal": self._renewals}).encode()

    def _call(self, method: str, key: str | None = None, **kw: Any) -> dict[str, Any]:
        try:
            return dict(self._fs.call_s3(method, Bucket=self._bucket, Key=key or self._key, **kw))
        except Exception as exc:  # s3fs/botocore raise many types; translated here, once
            status, code = _answer(exc)
            if status in (409, 412):  # 409: a conditional write raced by another
                raise _Conflict(str(exc)) from exc
            if method == "put_object" and code == "NoSuchKey":  # If-Match on a deleted hold
                raise _Missing(str(exc)) from exc
            if isinstance(exc, FileNotFoundError) and method != "put_object":  # no hold (a missing bucket: below)
                raise
            action = {"put_object": "write", "get_object": "read", "delete_object": "delete"}[method]
            raise storage.storage_error(self.url, f"{action} the run's hold", exc) from exc

    def _put(self, **condition: str) -> None:
        sent = time.monotonic()
        self._etag = self._call("put_object", Body=self._body(), ContentType="application/json",
                                **condition)["ETag"]
        self._written_at = sent  # S3 stamped it after this

    def _read(self, key: str | None = None) -> tuple[dict[str, Any], str, float] | None:
        """The hold as stored (this run's, or the one at ``key``): its content, its ETag and its age
        in seconds by S3's clock (None: there is none)."""
        from fsspec.asyn import sync

        try:
            answer = self._call("get_object", key=key)
        except FileNotFoundError:
            return None

        async def read_all(body: Any) -> bytes:
            async with body:
                return bytes(await body.read())

        data = sync(self._fs.loop, read_all, answer["Body"])
        try:
            info = json.loads(data)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            info = {}  # not one of ours, or cut short: it lapses like any other
        now = _s3_now(answer)
        modified = answer.get("LastModified") or now
        return info, str(answer["ETag"]), (now - modified).total_seconds()

    def acquire(self) -> None:
        """Take the hold, or take over one that lapsed, then renew it in a thread.

        Raises:
            RunInProgress: another process holds the run (named, with when its hold lapses).
            StorageError: the store cannot be reached, or refuses or ignores conditional writes.
        """
        self._check_conditional_writes()
        for _ in range(_ATTEMPTS):
            try:
                self._put(IfNoneMatch="*")
                break
            except _Conflict:
                pass
            stored = self._read()
            if stored is None:  # given back in between: try again
                continue
            info, etag, age = stored
            if info.get("token") == self._token:  # our own write landed; only its answer was lost
                self._etag = etag
                break
            ttl, dead_here = self._lapse(info)
            pid, host = info.get("pid"), info.get("host")
            if age <= ttl and not dead_here:
                holder = f"pid {pid} on {host}" if pid and host else "another process"
                raise RunInProgress(
                    f"run {self.run_id} is in progress ({holder}; its hold in {self.url} was renewed "
                    f"{max(0.0, age):.0f} s ago and lapses {ttl:g} s after its last renewal); wait for it to end, "
                    "or stop it, before resuming it")
            try:
                self._put(IfMatch=etag)  # only if no one renewed or took it since it was read
            except (_Conflict, _Missing):  # (renewed, taken, or given back meanwhile)
                continue
            why = "its process is gone" if dead_here else f"not renewed for {age:.0f} s"
            log.warning("run %s: took over the hold left by pid %s on %s (%s)", self.run_id, pid, host, why)
            break
        else:
            raise ConfigError(f"run {self.run_id}: another process keeps taking its hold in {self.url}; "
                              "is the run being resumed in several places at once?")
        self._thread = threading.Thread(target=self._renew_until_released, name="fmbench-run-hold", daemon=True)
        self._thread.start()
        try:
            self._sweep()
        except Exception as exc:  # noqa: BLE001 - tidying only: the next run tries again
            log.debug("run %s: could not tidy the lapsed holds beside it: %s", self.run_id, exc)

    def _sweep(self) -> None:
        """Delete what runs killed outright left beside this one: holds that lapsed (each only if
        unchanged since read, so a hold renewed meanwhile stays) and the store checks' objects."""
        holds = self._key.rsplit("/", 1)[0] + "/"
        listing = self._fs.call_s3("list_objects_v2", Bucket=self._bucket, Prefix=holds, MaxKeys=_SWEEP_MAX)
        now, young_s = _s3_now(listing), hold_seconds()
        for obj in listing.get("Contents", []):
            key = obj["Key"]
            name = key.rsplit("/", 1)[1]
            if key == self._key or (now - obj["LastModified"]).total_seconds() <= young_s:
                continue
            if name.startswith(".probe-"):
                self._call("delete_object", key=key)
                continue
            stored = self._read(key)
            if stored is None:
                continue
            ttl, dead_here = self._lapse(stored[0])
            if stored[2] <= ttl and not dead_here:
                continue
            try:
                self._call("delete_object", key=key, IfMatch=stored[1])
            except (_Conflict, FileNotFoundError):
                continue  # renewed or taken meanwhile
            log.info("removed the lapsed hold of run %s (pid %s on %s)", name.removesuffix(".json"),
                     stored[0].get("pid"), stored[0].get("host"))

    def _lapse(self, info: dict[str, Any]) -> tuple[float, bool]:
        """When a stored hold lapses: its holder's own ``ttl_s`` after its last renewal, and whether
        it already has (its holder was a process of this host that is gone)."""
        declared = info.get("ttl_s")
        ttl = float(declared) if isinstance(declared, int | float) else self.ttl_s
        pid, host = info.get("pid"), info.get("host")
        return ttl, host == platform.node() and isinstance(pid, int) and not storage.pid_alive(pid)

    def _check_conditional_writes(self) -> None:
        """Refuse a store that ignores S3's conditional writes (some S3-compatible stores accept the
        headers and do not act on them): there a hold would hold nothing, and taking one could
        overwrite another host's. Checked on an object of its own, so no hold is touched.

        Raises:
            StorageError: the store ignores If-None-Match or If-Match (or cannot be reached).
        """
        probe = f"{self._key.rsplit('/', 1)[0]}/.probe-{self._token}.json"
        try:
            self._call("put_object", key=probe, Body=b"{}", IfNoneMatch="*")
        except _Conflict as exc:  # a random name of 64 bits, taken: not a store to trust
            raise StorageError(f"s3://{self._bucket}/{probe}: refused as existing when new ({exc})") from exc
        ignored = []
        try:
            for header, condition in (("If-None-Match", {"IfNoneMatch": "*"}),
                                      ("If-Match", {"IfMatch": '"00000000000000000000000000000000"'})):
                try:
                    self._call("put_object", key=probe, Body=b"{}", **condition)
                except _Conflict:
                    continue  # refused, as S3 must
                ignored.append(header)
        finally:
            try:
                self._call("delete_object", key=probe)
            except Exception as exc:  # noqa: BLE001 - an empty object of a few bytes
                log.warning("run %s: cannot delete s3://%s/%s (%s)", self.run_id, self._bucket, probe, exc)
        if ignored:
            raise StorageError(
                f"{self.url}: the store ignores conditional writes ({' and '.join(ignored)}: a write S3 "
                "must refuse was accepted), so a hold there cannot keep another host out")

    def _renew_until_released(self) -> None:
        failing = False
        while not self._stop.wait(self.ttl_s / 4):
            self._renewals += 1
            try:
                lost = self._renew()
            except Exception as exc:  # noqa: BLE001 - the store may come back before the hold lapses
                if not failing:
                    log.warning("run %s: cannot renew its hold in %s (%s); trying again", self.run_id, self.url, exc)
                failing = True
                continue
            if lost is not None:
                self.lost = lost
                log.error("%s", self.lost)
                if self.on_lost is not None:
                    self.on_lost()
                return
            if failing:
                log.info("run %s: its hold is renewed again", self.run_id)
            failing = False

    def _renew(self) -> str | None:
        """Renew the hold; returns None while it is this process's, else what the report must say.

        Raises:
            StorageError: the store cannot be reached (the caller tries again).
        """
        try:
            self._put(IfMatch=self._etag or "")
            return None
        except (_Conflict, _Missing):
            pass
        when = datetime.now(UTC).isoformat(timespec="seconds")
        unrenewed = time.monotonic() - self._written_at
        stored = self._read()
        if stored is None and unrenewed > self.ttl_s:
            # Gone after it lapsed: another process may have taken it, resumed the run and given
            # it back meanwhile.
            return (f"run {self.run_id} could not renew its hold for {unrenewed:.0f} s (it lapses after "
                    f"{self.ttl_s:g} s) and found it gone at {when}: another process may have resumed the run "
                    "meanwhile, and shards measured since may carry both processes' load")
        if stored is None:  # deleted while it held (by hand, by a lifecycle rule): held again
            try:
                self._put(IfNoneMatch="*")
            except _Conflict:  # another process made it first
                stored = self._read()
            else:
                log.warning("run %s: its hold in %s had been deleted; it holds the run again", self.run_id, self.url)
                return None
        if stored is not None and stored[0].get("token") == self._token:
            # Our own renewal landed and its answer was lost (a retried request then finds the
            # object changed): still ours.
            self._etag = stored[1]
            return None
        holder = f"pid {stored[0].get('pid')} on {stored[0].get('host')}" if stored else "no one now"
        return (f"run {self.run_id} lost its hold to another process ({holder}) at {when}, not having "
                f"renewed it for {unrenewed:.0f} s (it lapses after {self.ttl_s:g} s): from then on two "
                "processes may have measured the run, and shards measured since may carry both processes' load")

    def release(self) -> None:
        """Stop renewing, and delete the hold unless another process has it now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is not None or self._etag is None:
            return
        try:
            self._call("delete_object", IfMatch=self._etag)
        except (_Conflict, FileNotFoundError):  # taken over, or deleted by hand: not ours to delete
            pass
        except Exception as exc:  # noqa: BLE001 - the hold lapses by itself
            log.warning("run %s: cannot give back its hold in %s (%s); it lapses %g s after its last renewal",
                        self.run_id, self.url, exc, self.ttl_s)
