"""A run directory: where one benchmark run keeps its config, manifest, payloads and records.

Layout of ``<output>/<name>/<run_id>/`` (local directory or ``s3://``)::

    config.yml            the resolved config
    manifest.json         versions, host, hashes, seeds, timing, shard outcomes, endpoint timelines
    prompts/              bucketed payloads, one parquet per dataset and bucket
    shards/               one records parquet + one result json per measured shard
    requests.parquet      every request of every shard
    metrics.csv/.parquet  one row per shard
    report.md/.html, plots/
    deletions/            endpoints fmbench cleanup deleted while the run was in progress, when

`RunInfo` knows this layout and `Manifest` the manifest's shape; other modules go through them
rather than building paths into a run or reading its JSON as a dict.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import getpass
import hashlib
import logging
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fmbench import __version__, storage
from fmbench.config import BenchmarkConfig, dump_config, load_config_text
from fmbench.deploy import EndpointTimeline
from fmbench.errors import ConfigError, RunInProgress, StorageError
from fmbench.names import check_run_id

if TYPE_CHECKING:
    from fmbench.lease import RunLease

log = logging.getLogger("fmbench")

MANIFEST = "manifest.json"
_manifest_lock = threading.Lock()  # lanes of one run update the manifest from several threads

_PACKAGES = ("prefect", "aiohttp", "boto3", "botocore", "sagemaker", "polars", "plotly", "tiktoken", "pydantic")


class RunInfo(BaseModel):
    """Identity and location of one run; small enough to pass between tasks."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Benchmark name.")
    run_id: str = Field(description="Run id; reusing it resumes the run.")
    url: str = Field(description="The run directory: local path or s3:// URL.")
    scratch: str = Field(description="Local directory for files written before upload (same as url when local).")
    resumed: bool = Field(default=False, description="True when the run directory already existed.")
    uid: str | None = Field(
        default=None, description="The run directory's own id, given when it was made (`Manifest.uid`): a directory "
        "deleted and made again under the same run id is another run.")

    def path(self, *parts: str) -> str:
        """A file of the run, e.g. ``run.path("shards", "x.parquet")``."""
        return storage.join(self.url, *parts)

    def scratch_path(self, *parts: str) -> Path:
        """A local scratch file of the run (for writers that need a real file)."""
        p = Path(self.scratch, *parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def shard_result(self, shard_id: str) -> str:
        """The JSON outcome of a measured shard (its presence means: measured, do not send again)."""
        return self.path("shards", f"{shard_id}.json")

    def prompts_file(self, dataset: str, bucket: str) -> str:
        """The parquet of a dataset's prompts in one bucket."""
        return self.path("prompts", f"{dataset}__{bucket}.parquet")

    def read_manifest(self) -> Manifest:
        """The run's manifest."""
        return load_manifest(self.url)

    def write_manifest(self, manifest: Manifest) -> None:
        """Replace the run's manifest (atomically)."""
        save_manifest(self.url, manifest)

    def update_manifest(self, change: Callable[[Manifest], None]) -> Manifest:
        """Read, change and write the manifest as one step for the threads of this process."""
        with _manifest_lock:
            manifest = self.read_manifest()
            change(manifest)
            self.write_manifest(manifest)
            return manifest

    def record_endpoint(self, timeline: EndpointTimeline) -> None:
        """Store an experiment's endpoint timeline in the manifest now, so a killed run's
        manifest still says which endpoints were alive."""
        self.update_manifest(lambda m: m.endpoints.__setitem__(timeline.experiment, timeline))


class Manifest(BaseModel):
    """``manifest.json``: what a run was (versions, host, config, seeds) and what happened in it.

    Every field has a default so that sparse or older manifests load; keys this model does not
    know (written by an older or newer fmbench) are kept as they are, hence ``extra="allow"``.
    """

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, description="Benchmark name.")
    run_id: str | None = Field(default=None, description="Run id.")
    tool_version: str | None = Field(default=None, description="fmbench version that made the run.")
    python: str | None = Field(default=None, description="Python version.")
    packages: dict[str, str | None] = Field(default_factory=dict, description="Versions of key packages.")
    host: dict[str, Any] = Field(default_factory=dict, description="Client host: name, platform, CPUs, user.")
    config_hash: str | None = Field(default=None, description="Hash of the resolved config.")
    tokenizer: str | None = Field(default=None, description="The run's tokenizer (experiments' default).")
    tokenizers: dict[str, str] = Field(
        default_factory=dict, description="Experiment -> the tokenizer that bucketed its prompts and counted the "
        "tokens its server did not report.")
    seeds: dict[str, Any] = Field(default_factory=dict, description="Dataset name -> seed.")
    started_at: str | None = Field(default=None, description="UTC ISO start of the run.")
    uid: str | None = Field(default=None, description="Random id given to the run directory when it was made "
                            "(None: made by an older fmbench).")
    ended_at: str | None = Field(default=None, description="UTC ISO end (None: unfinished).")
    command: str | None = Field(default=None, description="Command line that started the run.")
    storage: str | None = Field(default=None, description="Where the run is stored.")
    config_dir: str | None = Field(
        default=None, description="The directory of the config the run was started from: where the relative paths "
        "of the stored config.yml (datasets, an endpoint's ca_bundle) resolve when it is read again (None: unknown).")
    payload_hashes: dict[str, str] = Field(default_factory=dict, description="dataset/bucket -> sha256.")
    prompt_counts: dict[str, int] = Field(default_factory=dict, description="dataset/bucket -> prompts.")
    shards: list[dict[str, Any]] = Field(default_factory=list, description="Shard outcomes, in run order.")
    warnings: list[str] = Field(default_factory=list, description="Warnings of the run.")
    calibration: dict[str, Any] | None = Field(default=None, description="Client calibration and its summary.")
    endpoints: dict[str, EndpointTimeline] = Field(
        default_factory=dict, description="Experiment -> when its endpoint was created, served, measured, deleted.")


def has_manifest(run_url: str) -> bool:
    """True when the run at ``run_url`` has a manifest (it was opened by fmbench)."""
    return storage.exists(storage.join(run_url, MANIFEST))


def load_manifest(run_url: str) -> Manifest:
    """The manifest of the run at ``run_url``.

    Raises:
        StorageError: it is missing, unreadable or not a manifest.
    """
    url = storage.join(run_url, MANIFEST)
    data = storage.read_bytes(url)
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise StorageError(f"{url}: not a readable manifest ({json_problem(exc, data)})") from exc


def json_problem(exc: ValidationError, data: bytes) -> str:
    """What is wrong with a run's JSON file, from the error of validating ``data``: empty, not JSON
    (where), or the first field that does not fit (with how many more problems there are)."""
    if not data.strip():
        return "the file is empty"
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    loc = ".".join(str(p) for p in first["loc"])
    problem = f"field {loc!r}: {first['msg']}" if loc else f"top level: {first['msg']}"
    more = len(errors) - 1
    return problem + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def save_manifest(run_url: str, manifest: Manifest) -> None:
    """Write the manifest of the run at ``run_url`` (atomically)."""
    storage.write_text(storage.join(run_url, MANIFEST), manifest.model_dump_json(indent=2))


def record_late_deletions(url: str, run_id: str, deleted: dict[str, tuple[str, str]], by: str) -> list[str]:
    """Record in the manifest of the run at ``url`` the deletion of endpoints it left running, so its
    bill ends when they did rather than at the run's end (or the report's time, for a killed run).

    Args:
        deleted: experiment -> (endpoint name, UTC ISO time of the deletion).
        by: who deleted them, for the report (``fmbench cleanup``).

    Returns:
        The experiments whose timeline changed: only an endpoint of that name, recorded created by
        the run and not yet deleted, is changed.

    Raises:
        RunInProgress: the run is in progress in another process (its own teardown records it).
        StorageError: the manifest cannot be read or written.
    """
    if not has_manifest(url):
        return []
    changed: list[str] = []
    with hold_run(url, run_id):
        manifest = load_manifest(url)
        for experiment, (name, when) in deleted.items():
            if _mark_deleted(manifest, experiment, name, when, by):
                changed.append(experiment)
        if changed:
            save_manifest(url, manifest)
    return changed


def _mark_deleted(manifest: Manifest, experiment: str, name: str, when: str, by: str) -> bool:
    """Mark deleted at ``when`` by ``by`` the endpoint ``name`` of ``experiment``'s timeline: the run's
    own, or one an earlier attempt left that a resumed attempt could not adopt, the latest first; only
    one recorded created (no later than ``when``) and not yet deleted. False when there is none."""
    t = manifest.endpoints.get(experiment)
    if t is None:
        return False
    lives = t.lives()
    hit = next((i for i in reversed(range(len(lives)))
                if lives[i].endpoint_name == name and lives[i].created_at and not lives[i].deleted_at
                and _not_before(when, lives[i].created_at)), None)
    if hit is None:
        return False
    lives[hit] = lives[hit].model_copy(update={"deleted_at": when, "deleted_by": by})
    manifest.endpoints[experiment] = EndpointTimeline.from_lives(lives)
    return True


def _not_before(when: str, created_at: str | None) -> bool:
    try:
        return created_at is None or _dt.datetime.fromisoformat(when) >= _dt.datetime.fromisoformat(created_at)
    except (ValueError, TypeError):  # (a time unreadable, or with and without a zone)
        return True


#: Beside a run's manifest: one note per endpoint deleted by someone else while the run was in
#: progress (``fmbench cleanup --include-live``), read by the run's teardown, a resumed attempt's
#: deploy and the report of a run killed before either.
DELETIONS = "deletions"


class DeletionNote(BaseModel):
    """An endpoint of a run in progress deleted by someone else: when, and by whom."""

    model_config = ConfigDict(extra="forbid")

    endpoint_name: str
    deleted_at: str = Field(description="UTC ISO time of the deletion request (its bill ended then).")
    deleted_by: str


def note_deletion(url: str, endpoint_name: str, deleted_at: str, by: str) -> None:
    """Note beside the manifest of the run in progress at ``url`` that ``by`` deleted its endpoint
    ``endpoint_name`` at ``deleted_at``. The run holds its manifest, so this is its own file: the
    run's teardown, which finds the endpoint gone, bills it up to then (`noted_deletion`) rather
    than up to the teardown.

    Raises:
        StorageError: the note cannot be written.
    """
    note = DeletionNote(endpoint_name=endpoint_name, deleted_at=deleted_at, deleted_by=by)
    storage.write_text(storage.join(url, DELETIONS, f"{endpoint_name}.json"), note.model_dump_json())


def noted_deletion(url: str, endpoint_name: str | None, created_at: str | None) -> DeletionNote | None:
    """The note of `note_deletion` for ``endpoint_name``, if one says it was deleted after
    ``created_at`` (a note of an earlier endpoint of that name is not this one's); None if there is
    none, or it cannot be read (the run then bills the endpoint up to its teardown, an upper bound),
    or the endpoint has no name (not a SageMaker endpoint: cleanup deletes none other)."""
    if not endpoint_name:
        return None
    path = storage.join(url, DELETIONS, f"{endpoint_name}.json")
    try:
        if not storage.exists(path):
            return None
        note = _read_note(path)
    except StorageError as exc:
        log.warning("the note of endpoint %s's deletion cannot be read (%s): it is billed up to the teardown",
                    endpoint_name, exc)
        return None
    return note if note is not None and _not_before(note.deleted_at, created_at) else None


def with_noted_deletions(url: str, manifest: Manifest) -> Manifest:
    """``manifest`` with the deletions noted beside it (`note_deletion`) that it does not have: those of
    a run killed, and not resumed, after fmbench cleanup deleted its endpoint. Its report then bills
    that endpoint up to its deletion, not as still running."""
    try:
        notes = [n for u in storage.list_files(storage.join(url, DELETIONS), ".json") if (n := _read_note(u))]
    except StorageError as exc:
        log.warning("%s: the notes of its endpoints' deletions cannot be read (%s)", url, exc)
        return manifest
    if not notes:
        return manifest
    manifest = manifest.model_copy(update={"endpoints": dict(manifest.endpoints)})
    for note in notes:
        for experiment in list(manifest.endpoints):
            if _mark_deleted(manifest, experiment, note.endpoint_name, note.deleted_at, note.deleted_by):
                break
    return manifest


def _read_note(url: str) -> DeletionNote | None:
    try:
        return DeletionNote.model_validate_json(storage.read_text(url))
    except ValueError as exc:  # (pydantic's)
        log.warning("%s: not a note of an endpoint's deletion (%s); ignored", url, exc)
        return None


#: In the name of a shard's attempt that was set aside (its endpoint lost, or hung), kept beside the
#: shard's records: ``shards/<shard>.failed-<time>.parquet`` and its ``.json`` note.
SET_ASIDE = ".failed-"


def set_aside_file(shard_id: str, suffix: str) -> str:
    """The file name of an attempt of ``shard_id`` set aside now (``suffix``: ``.parquet``)."""
    return f"{shard_id}{SET_ASIDE}{utc_now().replace(':', '')}{suffix}"


def set_aside_files(run_url: str, suffix: str) -> list[str]:
    """The URLs of a run's set-aside attempt files ending in ``suffix``, sorted."""
    return [u for u in storage.list_files(storage.join(run_url, "shards"), suffix) if is_set_aside(u)]


def is_set_aside(url: str) -> bool:
    """Whether a file of a run's ``shards/`` is a set-aside attempt's (`SET_ASIDE`)."""
    return SET_ASIDE in url.rsplit("/", 1)[-1]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def utc_now(timespec: str = "seconds") -> str:
    """The current UTC time, ISO 8601 (``timespec="milliseconds"`` for event times within a run)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec=timespec)


def run_location(cfg: BenchmarkConfig, output: str | None, run_id: str) -> tuple[str, str]:
    """Where the run ``run_id`` of ``cfg`` lives: its URL and its local scratch directory (the same
    directory for a local run; under the system's temporary directory for a remote one).

    Raises:
        ConfigError: a run id that names no directory of its own (`fmbench.names.check_run_id`).
    """
    check_run_id(run_id)
    url = storage.join(storage.output_location(output or cfg.output), cfg.name, run_id)
    if storage.is_remote(url):
        return url, str(Path(tempfile.gettempdir(), "fmbench-scratch", cfg.name, run_id))
    url = str(Path(url).resolve())
    return url, url


#: Where the runs of this host hold their locks (`hold_run`): outside every run directory, whose
#: layout stays the same locally and in S3.
RUN_LOCKS = Path(tempfile.gettempdir(), "fmbench-run-locks")


def run_lock_file(url: str) -> Path:
    """The file run ``url`` (a resolved local path or a remote URL) is held by (`hold_run`)."""
    return RUN_LOCKS / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}.lock"


class RunHold:
    """A run held by this process (`hold_run`), and whether another process took it over meanwhile."""

    def __init__(self) -> None:
        self.lease: RunLease | None = None  # the hold of a run in S3, seen from every host

    def when_lost(self, stop: Callable[[], object]) -> None:
        """Call ``stop`` (from the renewing thread) if another process takes the hold over."""
        if self.lease is not None:
            self.lease.on_lost = stop

    def check(self) -> None:
        """Raise once another process has taken the hold over: from then on it measures the run, and
        this process must neither measure more (two loads on one endpoint) nor write its report.

        Raises:
            StorageError: the hold is lost (what this process measured before stays in the run).
        """
        lost = self.lease.lost if self.lease is not None else None
        if lost:
            raise StorageError(f"{lost}; this process stopped measuring it: the shards it measured before are "
                               "kept, the one in flight is measured again by whichever process resumes the run")


@contextmanager
def exclusive_run(cfg: BenchmarkConfig, output: str | None, run_id: str) -> Iterator[RunHold]:
    """Hold run ``run_id`` of ``cfg`` for this process while the block runs, new or resumed:
    a second process that resumes the same run at the same time (``--run-id`` of a run still
    going, in another terminal or a retried deployment) is refused instead of measuring the same
    shards side by side, doubling the load on the endpoint, and deleting the endpoint under the
    first (`hold_run`). The run is also marked live on this host under its config's name and run
    id, the tags of what it deploys, so that `fmbench cleanup` leaves its endpoints alone
    (`live_on_this_host`).

    Raises:
        RunInProgress: the run is in progress in another process.
    """
    url, _ = run_location(cfg, output, run_id)
    with hold_run(url, run_id) as hold, hold_live(cfg.name, run_id, url):
        yield hold


def live_lock_file(config_name: str, run_id: str) -> Path:
    """The file that run ``run_id`` of config ``config_name`` holds on this host while it is in
    progress, wherever its output is (`exclusive_run`)."""
    key = hashlib.sha256(f"{config_name}\0{run_id}".encode()).hexdigest()[:24]
    return RUN_LOCKS / f"live-{key}.lock"


def live_on_this_host(config_name: str, run_id: str) -> str | None:
    """Who runs run ``run_id`` of config ``config_name`` on this host now (``pid N on HOST``), or
    None when no process here does. A process that ended, however, holds nothing."""
    try:
        fd = os.open(live_lock_file(config_name, run_id), os.O_RDONLY)
    except OSError:  # never run here (or its lock could not be made: the run warned then)
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # (a shared probe, released at once)
        except BlockingIOError:
            return _lock_lines(fd)[0] or "another process"
        return None
    finally:
        os.close(fd)  # (releases the probe's lock)


def run_url_on_this_host(config_name: str, run_id: str) -> str | None:
    """Where run ``run_id`` of config ``config_name`` was stored when it last ran on this host, in
    progress or ended, as its lock says (`hold_live`): for ``fmbench cleanup`` without the config, to
    record in that run the deletion of its endpoints. None when this host has no such lock (the run
    ran elsewhere, or the system's temporary directory was cleared since), or the lock names no run
    directory (an older fmbench's). The lock directory is every user's: the caller checks that a
    manifest of that run is there (`is_run_of`)."""
    try:
        fd = os.open(live_lock_file(config_name, run_id), os.O_RDONLY)
    except OSError:
        return None
    try:
        lines = _lock_lines(fd)
    finally:
        os.close(fd)
    return lines[1] if len(lines) > 1 and lines[1] else None


def is_run_of(url: str, config_name: str, run_id: str) -> bool:
    """True when ``url`` holds the manifest of run ``run_id`` of config ``config_name``."""
    try:
        if not has_manifest(url):
            return False
        manifest = load_manifest(url)
    except (StorageError, OSError):  # (unreadable: not one to write into)
        return False
    return manifest.run_id == run_id and manifest.name == config_name


def _lock_lines(fd: int) -> list[str]:
    """A lock file's lines (`_flock_held`): who holds it, then what it holds (a run's directory)."""
    try:
        text = os.pread(fd, 8192, 0).decode(errors="replace")
    except OSError:
        return [""]
    return [line.strip() for line in text.split("\n")]


@contextmanager
def hold_live(config_name: str, run_id: str, url: str | None = None) -> Iterator[None]:
    """Mark run ``run_id`` of config ``config_name`` as in progress on this host while the block runs
    (`live_on_this_host`), naming its run directory ``url`` (`run_url_on_this_host`); another process
    doing the same is refused.

    Raises:
        RunInProgress: another process holds it.
    """
    def refuse(holder: str) -> ConfigError:
        return RunInProgress(f"run {run_id} of {config_name!r} is in progress ({holder}); wait for it to end, or "
                           "stop it, before running it again")

    # (cleanup's probe holds the file for an instant: a start at that instant waits it out)
    with _flock_held(live_lock_file(config_name, run_id), run_id, refuse, wait_s=2.0, holds=url):
        yield


@contextmanager
def hold_run(url: str, run_id: str) -> Iterator[RunHold]:
    """Hold run ``url`` for this process while the block runs (`exclusive_run`; ``fmbench evaluate``
    holds a finished run this way while it adds to it).

    On this host the lock is the kernel's (``flock``) on a file outside the run (`run_lock_file`): it
    ends with the process however it ends, so a killed run leaves nothing stale. A run in S3 is held
    from every host as well, by a lease object its process renews (`fmbench.lease`): a killed run's
    lease lapses after ``FMBENCH_RUN_HOLD_S`` (at once for a resume on the same host).

    Raises:
        RunInProgress: the run is in progress in another process.
    """
    hold = RunHold()
    with _hold_on_this_host(url, run_id):
        if storage.is_remote(url):
            with _hold_in_store(url, run_id, hold):
                yield hold
        else:
            yield hold


@contextmanager
def _hold_in_store(url: str, run_id: str, hold: RunHold) -> Iterator[None]:
    from fmbench.lease import RunLease

    if not url.startswith("s3://"):
        log.warning("run %s is held on this host only: holding a run in %s across hosts is not supported",
                    run_id, url.split("://", 1)[0])
        yield
        return
    lease = RunLease(url, run_id)
    try:
        lease.acquire()
    except StorageError as exc:  # e.g. a store without conditional writes
        log.warning("cannot hold run %s across hosts (%s): a resume of it on another host at the same time "
                    "would not be refused", run_id, exc)
        yield
        return
    hold.lease = lease
    try:
        yield
    finally:
        lease.release()


@contextmanager
def _hold_on_this_host(url: str, run_id: str) -> Iterator[None]:
    def refuse(holder: str) -> ConfigError:
        return RunInProgress(f"run {run_id} is in progress ({holder}); wait for it to end, or stop it, before "
                           "resuming it")

    with _flock_held(run_lock_file(url), run_id, refuse):
        yield


@contextmanager
def _flock_held(path: Path, run_id: str, refuse: Callable[[str], ConfigError], wait_s: float = 0.0,
                holds: str | None = None) -> Iterator[None]:
    """Hold the kernel's exclusive lock on ``path`` while the block runs, naming this process in it
    (and, on a second line, what it holds: ``holds``); ``refuse(holder)`` is raised when another
    process holds it for longer than ``wait_s``."""
    problem: OSError | None = None
    try:
        if not RUN_LOCKS.is_dir():
            RUN_LOCKS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                RUN_LOCKS.chmod(0o1777)  # every user's runs, as /tmp itself
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file: it still tells whether that user holds the run
            fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        problem = exc
    if problem is not None:
        log.warning("cannot hold run %s (%s: %s): a second process resuming it at the same time would not be "
                    "refused, and fmbench cleanup on this host cannot tell it is in progress", run_id, path,
                    problem.strerror or problem)
        yield
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _lock_lines(fd)[0] or "another process"
                    raise refuse(holder) from None
                time.sleep(0.02)
        with contextlib.suppress(OSError):  # (read-only: the holder stays unnamed)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (f"pid {os.getpid()} on {platform.node()}" + (f"\n{holds}" if holds else "")).encode(), 0)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def open_run(cfg: BenchmarkConfig, output: str | None = None, run_id: str | None = None,
             command: str | None = None) -> RunInfo:
    """Create a run directory, or reopen an existing one to resume it.

    Raises:
        ConfigError: resuming a run that was made with a different config, or a directory that holds
            measured shards but no manifest.
        StorageError: the run directory cannot be created or written.
    """
    rid = run_id or new_run_id()
    url, scratch = run_location(cfg, output, rid)
    run = RunInfo(name=cfg.name, run_id=rid, url=url, scratch=scratch, uid=secrets.token_hex(8))
    try:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # (the preflight checked the output; the disk may have changed since)
        raise StorageError(f"{scratch}: cannot create the run directory: {exc.strerror or exc}") from exc
    if storage.exists(run.path(MANIFEST)):
        # Compare configs as the current schema reads them, so a resumed run survives new
        # defaulted fields in a newer fmbench.
        old = load_config_text(storage.read_text(run.path("config.yml")), source=run.path("config.yml"))
        if old.config_hash() != cfg.config_hash():
            diff = _first_difference(old.model_dump(mode="json", exclude={"base_dir"}),
                                     cfg.model_dump(mode="json", exclude={"base_dir"}))
            raise ConfigError(
                f"run {rid} exists with a different config ({diff}); resume it with the same config "
                "or start a new run without --run-id"
            )
        storage.remove_orphaned_temp_files(url)  # left by a writer killed mid-write
        return run.model_copy(update={"resumed": True, "uid": run_uid(run.read_manifest())})
    if storage.list_files(run.path("shards")):
        # Measurements without the manifest that says which config made them: resuming would take them
        # as this config's, and writing this config over the directory's would hide where they came from.
        raise ConfigError(f"{url} holds measured shards but no {MANIFEST}, so which config measured them is "
                          "unknown; start a new run without --run-id, or move that directory away")
    storage.write_text(run.path("config.yml"), dump_config(cfg))
    run.write_manifest(_initial_manifest(cfg, run, command))
    return run


def run_uid(manifest: Manifest) -> str | None:
    """The id of the run directory a manifest belongs to (`RunInfo.uid`); for a run made before
    directories had one, its start time stands in."""
    return manifest.uid or manifest.started_at


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else k)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where or 'config'} differs"


def _initial_manifest(cfg: BenchmarkConfig, run: RunInfo, command: str | None) -> Manifest:
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return Manifest(
        name=cfg.name,
        run_id=run.run_id,
        tool_version=__version__,
        python=sys.version.split()[0],
        packages=packages,
        host={
            "hostname": platform.node(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "user": _safe_user(),
        },
        config_hash=cfg.config_hash(),
        tokenizer=cfg.tokenizer,
        tokenizers={e.name: cfg.tokenizer_for(e) for e in cfg.experiments},
        seeds={d.name: getattr(d, "seed", None) for d in cfg.datasets},
        started_at=utc_now(),
        uid=run.uid,
        command=command or f"fmbench run config.yml --run-id {run.run_id}",
        storage=run.url,
        config_dir=cfg.base_dir,
    )


def _safe_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no user database entry in some containers
        return None


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes (payload hashes in the manifest)."""
    return hashlib.sha256(data).hexdigest()
