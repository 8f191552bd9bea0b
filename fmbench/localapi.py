"""A local Prefect API that outlives one `fmbench run`, so the next run does not wait for it to start.

Prefect's embedded ("ephemeral") server starts with every run and takes 10-15 s on a busy 2-core
machine. `local_prefect_api` instead starts ``prefect server start`` once, under a small watchdog
process (``python -m fmbench.localapi``), and later runs reuse it while it is healthy and of the
installed Prefect version. Each run holds a lease (a file named by its pid); the watchdog stops the
server after ``FMBENCH_PREFECT_API_IDLE_S`` seconds (default 1800) without a live lease, or when its
Prefect home is gone. A run does not wait for the server to start: it reads and checks its config
and imports Prefect meanwhile (`LocalApi.wait`); a server that does not answer within
``FMBENCH_PREFECT_API_STARTUP_S`` leaves the run on the embedded server. ``FMBENCH_PREFECT_API=embedded``
keeps Prefect's own per-run server, and a set ``PREFECT_API_URL`` is always used as it is. A Prefect
home without a database gets a copy of the empty, migrated one ``make install`` made
(`make_db_template`), so a first run does not wait for Prefect's migrations. This module starts
Prefect as a program; it never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from fmbench.cachedir import cache_dir
from fmbench.errors import FMBenchError
from fmbench.settings import number, prefect_api_choice

log = logging.getLogger("fmbench")

IDLE_S = number("FMBENCH_PREFECT_API_IDLE_S", 1800.0)
_POLL_S = 0.5

__all__ = [
    "LocalApi", "api_state_dir", "check_api_url", "db_template", "local_prefect_api", "make_db_template",
    "stop_local_api",
]


def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser().resolve()


def api_state_dir() -> Path:
    """Where the server of this Prefect home (its database) keeps its state, lock and leases."""
    key = hashlib.sha256(str(_prefect_home()).encode()).hexdigest()[:12]
    return cache_dir() / "prefect-api" / key


def db_template() -> Path:
    """The empty, migrated Prefect database ``make install`` keeps for the installed Prefect version.

    It lives in the environment (``sys.prefix``), beside the Prefect it was made by;
    ``FMBENCH_PREFECT_DB_TEMPLATE`` names another file.
    """
    override = os.environ.get("FMBENCH_PREFECT_DB_TEMPLATE")
    if override:
        return Path(override)
    return Path(sys.prefix) / "share" / "fmbench" / f"prefect-{version('prefect')}.db"


def _server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--no-services", "--no-ui", "--analytics-off", "--log-level", "ERROR"]


def _stop_server(server: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop a server started in a session of its own (SIGTERM to its group, SIGKILL after ``timeout_s``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def make_db_template(path: Path | None = None) -> Path:
    """Create `db_template` (once): a new database, migrated and filled by one start of Prefect's server.

    A new database costs a first run 8-10 s on a 2-core machine: Prefect's migrations, then the
    registration of its block types at the server's first start. Both are done here, by Prefect
    itself, with none of the caller's Prefect settings (a private home, a directory with no ``.env``
    or ``prefect.toml``), so the template is always Prefect's default SQLite database.
    """
    if path is None:
        path = db_template()
        if "FMBENCH_PREFECT_DB_TEMPLATE" not in os.environ:
            drop_stale_templates(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".prefect-db-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_HOME": tmp, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(Path(tmp) / "server.log", "wb") as log_file:
            server = subprocess.Popen(
                _server_command(port), env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + _startup_timeout_s()
            while not _healthy(url, timeout=1.0):
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (Path(tmp) / "server.log").read_text(errors="replace").strip()[-500:]
                    raise RuntimeError(f"Prefect's server did not start on a new database: {tail}")
                time.sleep(0.2)
        finally:
            _stop_server(server, 30)
        db = Path(tmp) / "prefect.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:  # fold the write-ahead log into the file
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file; Prefect sets its own mode
        os.replace(db, path)  # atomic: a reader sees no template or a whole one
    return path


def drop_stale_templates(keep: Path) -> list[Path]:
    """Delete the templates of other Prefect versions beside ``keep`` (``prefect-<version>.db``): a
    Prefect upgrade would otherwise leave one behind per version. Returns what was deleted."""
    stale = [p for p in keep.parent.glob("prefect-*.db") if p.name != keep.name and p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


def _uses_default_database(home: Path) -> bool:
    """True when Prefect's server would use ``<home>/prefect.db``, judged conservatively.

    Any Prefect database setting in the environment, the home's profiles, or the current
    directory's ``.env``, ``prefect.toml`` or ``pyproject.toml`` (which Prefect also reads) means
    the user chose a database: it is left to Prefect.
    """
    if any(k.startswith("PREFECT_") and "DATABASE" in k for k in os.environ):
        return False
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    cwd = Path.cwd()
    for file, words in ((profiles, ("DATABASE", "PREFECT_HOME")), (cwd / ".env", ("PREFECT_",)),
                        (cwd / "pyproject.toml", ("TOOL.PREFECT",)), (cwd / "prefect.toml", ("",))):
        try:
            text = file.read_text(errors="replace").upper()
        except OSError:
            continue
        if any(w in text for w in words):
            return False
    return True


def _seed_database(home: Path) -> bool:
    """Give a Prefect home without a database a copy of `db_template`; True when it did.

    Never replaces a database (a file that appears meanwhile wins), and does nothing when the
    template is missing or the user configured another database: Prefect then migrates as usual.
    """
    template, db = db_template(), home / "prefect.db"
    if db.exists() or not template.is_file() or not _uses_default_database(home):
        return False
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / f".prefect.db.fmbench-{os.getpid()}"
    try:
        shutil.copyfile(template, tmp)
        os.link(tmp, db)  # unlike a rename, fails when prefect.db exists by now
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a watchdog started by this very process is a zombie after it exits, until reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_state(state: Path) -> dict[str, object] | None:
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_state(root: Path, state: dict[str, object]) -> None:
    tmp = root / f"state.json.{os.getpid()}"
    tmp.write_text(json.dumps(state))
    tmp.replace(root / "state.json")  # readers never see half a file


def _startup_timeout_s() -> float:
    """How long a run waits for the local server before it goes on with the embedded one."""
    default = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    return number("FMBENCH_PREFECT_API_STARTUP_S", float(default))


def _spawn(root: Path) -> str:
    """Start the watchdog (which starts the server) without waiting for it; returns its URL.

    The state file says ``ready: false`` until a run has seen the API answer, so a run that starts
    meanwhile shares this server (and waits for it) instead of starting a second one.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    logfile = open(root / "server.log", "ab")  # noqa: SIM115 - handed to the detached child
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "fmbench.localapi", "--root", str(root), "--port", str(port),
             "--home", str(_prefect_home())],
            stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )
    finally:
        logfile.close()
    _write_state(root, {"url": url, "pid": watchdog.pid, "prefect": version("prefect"),
                        "home": str(_prefect_home()), "ready": False, "started_at": time.time()})
    return url


def _wait_ready(root: Path, url: str) -> None:
    """Wait until the server at ``url`` answers; raises RuntimeError (and stops it) when it does not."""
    state = _read_state(root / "state.json") or {}
    pid = int(str(state.get("pid", 0))) if state.get("url") == url else 0
    started = float(str(state.get("started_at", time.time())))
    deadline = started + _startup_timeout_s()
    while True:
        if _healthy(url, timeout=1.0):
            break
        if pid <= 0 or not _alive(pid):
            raise RuntimeError(f"the local Prefect server exited; see {root / 'server.log'}")
        if time.time() > deadline:
            _terminate(pid)
            raise RuntimeError(f"the local Prefect server did not answer within {_startup_timeout_s():g} s "
                               "(FMBENCH_PREFECT_API_STARTUP_S, default PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); "
                               f"see {root / 'server.log'}")
        time.sleep(0.1)
    if not state.get("ready", True):
        with open(root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            now = _read_state(root / "state.json") or {}
            if now.get("pid") == state.get("pid"):
                _write_state(root, now | {"ready": True})


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _reusable(root: Path) -> str | None:
    """The URL of this Prefect home's server when it can be reused (running, or still starting); stops a stale one."""
    state = _read_state(root / "state.json")
    if not state:
        return None
    url, pid = str(state.get("url")), int(str(state.get("pid", 0)))
    if state.get("prefect") == version("prefect") and pid > 0 and _alive(pid):
        if _healthy(url):
            return url
        starting = not state.get("ready", True)
        if starting and time.time() - float(str(state.get("started_at", 0))) < _startup_timeout_s():
            return url  # another run started it a moment ago: wait for it too
    if pid > 0 and _alive(pid):  # another Prefect version, or not answering: replace it
        _terminate(pid)
    (root / "state.json").unlink(missing_ok=True)
    return None


class LocalApi:
    """The Prefect API of one run: a reusable local server that may still be starting.

    ``url`` is the server's base URL, or None when the run uses ``PREFECT_API_URL`` as set or
    Prefect's embedded server. Call `wait` before the first Prefect call: everything a run does
    before then (reading and checking its config, importing Prefect) overlaps the server's start.
    """

    def __init__(self, root: Path | None, url: str | None, started: bool, external: str | None = None) -> None:
        self.url, self.started, self._root, self._external = url, started, root, external

    def wait(self) -> str | None:
        """Block until the server answers; returns its URL.

        When it does not come up (logged, not raised) ``PREFECT_API_URL`` is unset and None is
        returned: the run goes on with Prefect's embedded server. A caller that imported Prefect
        before this must also point Prefect's already-loaded settings back at the embedded server.

        Raises:
            FMBenchError: the API that ``PREFECT_API_URL`` names (``external``) cannot be reached.
        """
        if self._external is not None:
            check_api_url(self._external)
        if self.url is None or self._root is None:
            return None
        try:
            _wait_ready(self._root, self.url)
        except (OSError, RuntimeError) as exc:
            log.warning("could not start a reusable local Prefect server, using the embedded one: %s", exc)
            os.environ.pop("PREFECT_API_URL", None)
            self.url = None
        return self.url


def check_api_url(url: str, timeout_s: float = 10.0) -> None:
    """Fail in one line when the Prefect API that ``PREFECT_API_URL`` names does not answer at all.

    Any HTTP answer counts (an API that wants a key answers 401): only a connection that cannot be
    made, or no answer within ``timeout_s``, is an error, where Prefect would raise with a traceback.

    Raises:
        FMBenchError: (exit 3, the environment) naming the variable and its value.
    """
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:  # URLError, a timeout, a URL that is not one
        reason = getattr(exc, "reason", None) or exc
        raise FMBenchError(f"PREFECT_API_URL={url!r}: cannot reach the Prefect API ({reason}); start that "
                           "server, or correct or unset PREFECT_API_URL") from exc


@contextlib.contextmanager
def local_prefect_api() -> Iterator[LocalApi]:
    """Point ``PREFECT_API_URL`` at a reusable local Prefect server for the duration of a run.

    Must be entered before ``prefect`` is imported (Prefect reads its settings at import). Starts the
    server when none runs, without waiting for it: call `LocalApi.wait` before the flow. The
    `LocalApi`'s ``url`` is None when the run uses ``PREFECT_API_URL`` as set, or Prefect's embedded
    server (``FMBENCH_PREFECT_API=embedded``, or the local server could not be started: logged).
    """
    if os.environ.get("PREFECT_API_URL"):
        yield LocalApi(None, None, False, external=os.environ["PREFECT_API_URL"])
        return
    if prefect_api_choice() == "embedded":
        with contextlib.suppress(OSError):  # the embedded server migrates a new database as well
            _seed_database(_prefect_home())
        yield LocalApi(None, None, False)
        return
    root = api_state_dir()
    lease = root / "leases" / str(os.getpid())
    url: str | None = None
    started = False
    try:
        (root / "leases").mkdir(parents=True, exist_ok=True)
        with open(root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two runs starting at once share one server
            lease.touch()  # first: a watchdog never sees this run's server idle
            url = _reusable(root)
            started = url is None
            if url is None:
                url = _spawn(root)
        log.info("Prefect API: %s local server %s (stops after %.0f min without runs)",
                 "starting a" if started else "reusing the", url, IDLE_S / 60)
    except (OSError, RuntimeError) as exc:
        log.warning("could not start a reusable local Prefect server, using the embedded one: %s", exc)
        url = None
    if url is None:
        with contextlib.suppress(OSError):  # (also a cache directory that cannot be one)
            lease.unlink()
        yield LocalApi(None, None, False)
        return
    os.environ["PREFECT_API_URL"] = f"{url}/api"
    try:
        yield LocalApi(root, url, started)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        lease.unlink(missing_ok=True)


def stop_local_api() -> bool:
    """Stop this Prefect home's reusable server, if one runs; True when one was stopped."""
    root = api_state_dir()
    state = _read_state(root / "state.json")
    pid = int(str(state.get("pid", 0))) if state else 0
    if pid <= 0 or not _alive(pid):
        return False
    _terminate(pid)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


# ---------------------------------------------------------------- the watchdog process


def _live_leases(leases: Path) -> int:
    live = 0
    for f in leases.iterdir():
        if f.name.isdigit() and _alive(int(f.name)):
            live += 1
        else:
            f.unlink(missing_ok=True)
    return live


def _die_with_parent(parent: int) -> None:
    """In the server's process, before exec: the kernel stops it when the watchdog (``parent``)
    dies (Linux). A watchdog that died between the fork and this request sent no signal: the
    child then finds it has another parent already, and exits instead of starting an orphan."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watchdog's own stop still covers it
        return
    if os.getppid() != parent:
        os._exit(1)


def _watch(root: Path, port: int, home: Path) -> int:
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)  # acted on by the loop: a stop during the server's start leaves no orphan

    # Before the server starts: a stop that arrives meanwhile must still take the server down.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Prefect would create its home, but only after its import: meanwhile the loop below would take
    # a missing home (a first run on this machine) for one that was removed.
    with contextlib.suppress(OSError):
        home.mkdir(parents=True, exist_ok=True)
    try:
        if _seed_database(home):
            print(f"fmbench: a new Prefect database at {home / 'prefect.db'}, copied from {db_template()}", flush=True)
    except OSError as exc:  # Prefect creates and migrates its database itself
        print(f"fmbench: could not copy {db_template()} into {home}: {exc}", flush=True)
    import ctypes  # noqa: F401 - imported here, so the forked child's _die_with_parent need not (a shorter window)

    server = subprocess.Popen(
        _server_command(port), stdin=subprocess.DEVNULL, start_new_session=True,
        # single-threaded here, so a preexec_fn is safe
        preexec_fn=functools.partial(_die_with_parent, os.getpid()) if sys.platform == "linux" else None,  # noqa: PLW1509
    )
    leases = root / "leases"
    try:
        while server.poll() is None and not stopping:
            time.sleep(_POLL_S)
            if stopping:
                break
            if not home.exists() or not leases.exists():
                break  # the Prefect home (or our state) was removed, e.g. a test's temporary directory
            if _live_leases(leases) == 0 and time.time() - leases.stat().st_mtime > IDLE_S:
                break
        return 0
    finally:
        state = _read_state(root / "state.json")
        if state and state.get("pid") == os.getpid():
            (root / "state.json").unlink(missing_ok=True)
        if server.poll() is None:
            _stop_server(server, 10)


def main(argv: list[str] | None = None) -> int:
    """The watchdog (run ``prefect server start`` until idle for ``IDLE_S``), or make the database template."""
    p = argparse.ArgumentParser(prog="python -m fmbench.localapi")
    p.add_argument("--make-db-template", action="store_true",
                   help="create the migrated empty Prefect database new Prefect homes start from (make install)")
    p.add_argument("--root", type=Path)
    p.add_argument("--port", type=int)
    p.add_argument("--home", type=Path)
    args = p.parse_args(argv)
    if args.make_db_template:
        try:
            make_db_template()
        except (OSError, RuntimeError) as exc:  # only a first run's speed depends on it
            print(f"fmbench: no Prefect database template ({exc}); a new Prefect home migrates its own",
                  file=sys.stderr)
        return 0
    if args.root is None or args.port is None or args.home is None:
        p.error("--root, --port and --home are required")
    return _watch(args.root, args.port, args.home)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
