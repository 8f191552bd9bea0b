"""The reusable local Prefect API: started by the first run, reused by the next, stopped when idle."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fmbench.errors import ExitCode, FMBenchError
from fmbench.localapi import (
    _seed_database,
    api_state_dir,
    drop_stale_templates,
    local_prefect_api,
    make_db_template,
    stop_local_api,
)

pytestmark = pytest.mark.integration

_ENTER = """
from fmbench.localapi import local_prefect_api
with local_prefect_api() as api:
    print(api.wait())
"""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait_down(url: str, pid: int, limit_s: float) -> bool:
    # generous: only that it stops is asserted, never how fast
    from fmbench.localapi import _alive

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return not _healthy(url)
        time.sleep(0.5)
    return False


@contextlib.contextmanager
def _answering_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that answers every request with an error status (501): reachable, not Prefect."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def private_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    (tmp_path / "prefect-home").mkdir()
    monkeypatch.setenv("FMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FMBENCH_PREFECT_API", "reuse")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    yield tmp_path
    stop_local_api()
    # Nothing this Prefect home started outlives the test (a server orphaned by its watchdog would).
    deadline = time.monotonic() + 60
    while (left := _processes_of(tmp_path / "prefect-home")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of this Prefect home still run: {left}"


def _processes_of(home: Path) -> list[int]:
    needle = f"PREFECT_HOME={home}".encode()  # or a home inside it
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(v == needle or v.startswith(needle + b"/") for v in (proc / "environ").read_bytes().split(b"\0")):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _describe(tmp: Path, watchdog: int) -> str:
    """What a failed wait for the watchdog's server saw: the processes of this home and the server log."""
    lines = []
    for pid in [*_processes_of(tmp / "prefect-home"), watchdog]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            lines.append(f"pid {pid} state {stat[0]} parent {stat[1]}: {cmd[:200]}")
        except OSError as exc:
            lines.append(f"pid {pid}: {exc}")
    log = api_state_dir() / "server.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no server.log)"
    return "\n".join([*lines, "server.log:", tail])


def test_a_second_run_reuses_the_local_prefect_api_and_it_stops_when_idle(
        private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_PREFECT_API_IDLE_S", "3")  # read by the watchdog process it starts
    with local_prefect_api() as api:
        first = api.wait()
        assert first and _healthy(first)
        assert os.environ["PREFECT_API_URL"] == f"{first}/api"
        state = json.loads((api_state_dir() / "state.json").read_text())
        # a run holds a lease while it runs: the idle timer does not stop the server under it
        time.sleep(8)
        assert _healthy(first)
        # a second run (another process) at the same time shares it
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        second = subprocess.run([sys.executable, "-c", _ENTER], env=env, capture_output=True, text=True,
                                timeout=300, check=True).stdout.split()[-1]
        assert second == first
    assert "PREFECT_API_URL" not in os.environ
    with local_prefect_api() as api:  # the next run, within the idle time, reuses it
        assert not api.started and api.wait() == first
    assert json.loads((api_state_dir() / "state.json").read_text())["pid"] == state["pid"]
    assert _wait_down(first, int(state["pid"]), 120), "the idle local Prefect API did not stop"
    assert not (api_state_dir() / "state.json").exists()


def test_a_set_api_url_or_embedded_mode_starts_nothing(private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = private_api / "template.db"
    template.write_bytes(b"template")
    monkeypatch.setenv("FMBENCH_PREFECT_DB_TEMPLATE", str(template))
    with _answering_server() as other:
        monkeypatch.setenv("PREFECT_API_URL", f"{other}/api")
        with local_prefect_api() as api:
            assert api.url is None and api.wait() is None
            assert os.environ["PREFECT_API_URL"] == f"{other}/api"
    assert not (private_api / "prefect-home" / "prefect.db").exists()  # that server has its own database
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("FMBENCH_PREFECT_API", "embedded")
    with local_prefect_api() as api:
        assert api.wait() is None and "PREFECT_API_URL" not in os.environ
    # the embedded server's new database starts from the template too
    assert (private_api / "prefect-home" / "prefect.db").read_bytes() == b"template"
    assert not (api_state_dir() / "state.json").exists()


def test_a_set_api_url_that_cannot_be_reached_is_one_line_naming_it(private_api: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"  # nothing listens there once closed
    monkeypatch.setenv("PREFECT_API_URL", url)
    with local_prefect_api() as api, pytest.raises(FMBenchError) as err:
        api.wait()
    assert err.value.exit_code == ExitCode.ENVIRONMENT
    assert str(err.value).startswith(f"PREFECT_API_URL={url!r}: cannot reach the Prefect API (")
    assert not (api_state_dir() / "state.json").exists()  # no local server was started instead


def test_a_cache_directory_that_cannot_be_one_leaves_the_run_on_the_embedded_api(
        private_api: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The cache only saves start-up time: a ``FMBENCH_CACHE_DIR`` under a file (or not writable)
    costs the run its reusable API, with a warning, not the run."""
    (private_api / "a-file").write_text("x")
    monkeypatch.setenv("FMBENCH_CACHE_DIR", str(private_api / "a-file" / "cache"))
    with caplog.at_level("WARNING", logger="fmbench"), local_prefect_api() as api:
        assert api.url is None and api.wait() is None and "PREFECT_API_URL" not in os.environ
    assert "could not start a reusable local Prefect server, using the embedded one" in caplog.text


def test_a_run_that_starts_while_the_server_is_still_starting_shares_it(
        private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Prefect home that does not exist yet (a first run on a new machine) and no database template:
    # the watchdog must not take the missing home for a removed one while Prefect creates it.
    monkeypatch.setenv("PREFECT_HOME", str(private_api / "prefect-home" / "new"))
    monkeypatch.setenv("FMBENCH_PREFECT_DB_TEMPLATE", str(private_api / "no-template.db"))
    with local_prefect_api() as api:
        assert api.started and api.url  # spawned, not waited for: the run goes on meanwhile
        state = json.loads((api_state_dir() / "state.json").read_text())
        assert state["ready"] is False
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        second = subprocess.run([sys.executable, "-c", _ENTER], env=env, capture_output=True, text=True,
                                timeout=300, check=True).stdout.split()[-1]
        assert second == api.url  # it waited for the same server instead of starting another
        assert api.wait() == api.url and _healthy(api.url)
    state_after = json.loads((api_state_dir() / "state.json").read_text())
    assert state_after["pid"] == state["pid"] and state_after["ready"] is True


def test_a_server_that_does_not_come_up_leaves_the_run_on_the_embedded_one(
        private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMBENCH_PREFECT_API_STARTUP_S", "0.01")
    with local_prefect_api() as api:
        url, pid = api.url, json.loads((api_state_dir() / "state.json").read_text())["pid"]
        assert url and api.wait() is None
        assert "PREFECT_API_URL" not in os.environ and api.url is None
    assert _wait_down(str(url), int(pid), 60), "the server that missed its startup time was not stopped"


_RUN_CONFIG = """
name: localapi
tokenizer: cl100k_base
output: {output}
buckets: [[1, 500]]
datasets:
  - {{name: synthetic, source: synthetic, prompts_per_bucket: 2, seed: 0}}
experiments:
  - name: sim
    endpoint: {{provider: simulated, ttft_ms: 5, tpot_ms: 1, output_tokens: 4, max_batch: 8}}
    inference: {{max_tokens: 4, stream: true}}
    concurrency_levels: [1]
    requests_per_level: 2
    warmup_requests: 0
"""


def test_fmbench_run_on_the_local_api_and_on_the_embedded_one_when_it_does_not_come_up(private_api: Path) -> None:
    cfg = private_api / "run.yml"
    cfg.write_text(_RUN_CONFIG.format(output=private_api / "results"))
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
        "PYTHONPATH": str(root), "FMBENCH_CALIBRATION_LOAD_TOLERANCE": "1000"}

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", "run", str(cfg), "--no-png"], cwd=root,
                              env=env | extra, capture_output=True, text=True, timeout=600, check=False)

    first = run()
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Prefect API: starting a local server" in first.stderr
    url = json.loads((api_state_dir() / "state.json").read_text())["url"]
    with urllib.request.urlopen(urllib.request.Request(  # the flow run was recorded by that server
            f"{url}/api/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"})) as resp:
        assert [r["state_type"] for r in json.loads(resp.read())] == ["COMPLETED"]
    assert stop_local_api()
    second = run(FMBENCH_PREFECT_API_STARTUP_S="0.01")  # the next server misses its start: embedded
    assert second.returncode == 0, second.stderr[-2000:]
    assert "using the embedded one" in second.stderr and "Report: " in second.stdout
    assert len(list((private_api / "results" / "localapi").iterdir())) == 2


def test_a_watchdog_killed_while_its_server_starts_takes_the_server_with_it(private_api: Path) -> None:
    with local_prefect_api() as api:
        watchdog = int(json.loads((api_state_dir() / "state.json").read_text())["pid"])
        deadline = time.monotonic() + 60
        while len(_processes_of(private_api / "prefect-home")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the watchdog has started the server (not yet answering)
        assert len(_processes_of(private_api / "prefect-home")) >= 2, _describe(private_api, watchdog)
        os.kill(watchdog, 9)  # no handler runs: only the kernel can stop the server now
        assert api.wait() is None  # the run goes on with the embedded server
    # the fixture checks that no process of this Prefect home is left


def test_a_first_run_in_a_new_prefect_home_starts_from_the_migrated_database_template(
        private_api: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = make_db_template(private_api / "template" / "prefect.db")  # Prefect migrates and starts once
    with contextlib.closing(sqlite3.connect(template)) as db:
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM block_type").fetchone()[0] > 0  # the server's first start too
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one whole file, no log beside it
    assert make_db_template(template) == template  # made once
    home = private_api / "prefect-home" / "new"  # not created yet: a first run on a new machine
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("FMBENCH_PREFECT_DB_TEMPLATE", str(template))
    with local_prefect_api() as api:
        url = api.wait()
        assert url and _healthy(url)
        log = (api_state_dir() / "server.log").read_text()
        assert f"copied from {template}" in log
        request = urllib.request.Request(f"{url}/api/flows/", data=b'{"name": "seeded"}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as resp:  # the schema is there: the API writes to it
            assert resp.status in (200, 201)
    assert stop_local_api()
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:
        assert [r[0] for r in db.execute("SELECT name FROM flow")] == ["seeded"]


def test_a_database_the_user_has_or_chose_is_never_replaced_by_the_template(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    template = tmp_path / "template.db"
    template.write_bytes(b"template")  # only the decision and the copy are checked here
    monkeypatch.setenv("FMBENCH_PREFECT_DB_TEMPLATE", str(template))
    for k in [k for k in os.environ if k.startswith("PREFECT_") and "DATABASE" in k]:
        monkeypatch.delenv(k)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    home = tmp_path / "home"
    home.mkdir()

    (home / "prefect.db").write_bytes(b"mine")
    assert not _seed_database(home) and (home / "prefect.db").read_bytes() == b"mine"
    (home / "prefect.db").unlink()

    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    assert not _seed_database(home)
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL")

    (home / "profiles.toml").write_text('[profiles.default]\nPREFECT_API_DATABASE_CONNECTION_URL = "x"\n')
    assert not _seed_database(home)
    (home / "profiles.toml").write_text('active = "default"\n[profiles.default]\n')

    (work / "prefect.toml").write_text("[server.database]\n")
    assert not _seed_database(home)
    (work / "prefect.toml").unlink()
    (work / "pyproject.toml").write_text("[tool.prefect.server]\n")
    assert not _seed_database(home)
    (work / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert not (home / "prefect.db").exists()

    assert _seed_database(home) and (home / "prefect.db").read_bytes() == b"template"
    assert sorted(p.name for p in home.iterdir()) == ["prefect.db", "profiles.toml"]  # no copy left behind
    template.unlink()
    (home / "prefect.db").unlink()
    assert not _seed_database(home)  # no template (not installed): Prefect migrates as before


def test_a_prefect_upgrade_leaves_only_its_own_database_template(tmp_path: Path) -> None:
    share = tmp_path / "share" / "fmbench"
    share.mkdir(parents=True)
    for name in ("prefect-3.8.0.db", "prefect-3.9.1.db", "prefect-3.10.0.db", "notes.db"):
        (share / name).write_bytes(b"x")
    dropped = drop_stale_templates(share / "prefect-3.10.0.db")
    assert sorted(p.name for p in dropped) == ["prefect-3.8.0.db", "prefect-3.9.1.db"]
    assert sorted(p.name for p in share.iterdir()) == ["notes.db", "prefect-3.10.0.db"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_whose_watchdog_died_before_its_exec_does_not_start() -> None:
    # The kernel's "stop me when my parent dies" is asked for after the fork: a watchdog killed in
    # between sends no signal, so the child checks whose child it is and exits instead of running
    # as an orphan. Here it is given a parent that is not its own, as if that one had died.
    from fmbench.localapi import _die_with_parent

    not_the_parent = os.getpid() + 1_000_000
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             preexec_fn=functools.partial(_die_with_parent, not_the_parent))  # noqa: PLW1509
    assert child.wait(timeout=30) == 1  # exited before the exec, not after a minute's sleep
    kept = subprocess.Popen([sys.executable, "-c", "pass"],
                            preexec_fn=functools.partial(_die_with_parent, os.getpid()))  # noqa: PLW1509
    assert kept.wait(timeout=30) == 0  # its parent is the one named: it runs
