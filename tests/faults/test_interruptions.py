"""Interruptions: an endpoint that is down (shard retried by Prefect, then reported failed), a server
restarted mid-shard, SIGKILL at several points then resume, and Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import select
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psutil
import pytest
import yaml

from fmbench.rundir import run_lock_file
from fmbench.simulator.faults import FaultConfig
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.cli import ROOT, fmbench_argv, repo_frames
from tests.support.sim_shards import CRASH_STATE, ODD_STATE, SIM, run_sim_shard, server_faults

SIM_CFG = {"provider": "simulated", "ttft_ms": 20, "tpot_ms": 3, "output_tokens": 6}


def _config(tmp_path: Path, name: str, experiments: list[dict[str, Any]], requests: int = 4,
            levels: list[int] | None = None, buckets: list[list[int]] | None = None) -> Path:
    cfg = {
        "name": name, "output": str(tmp_path / "results"), "buckets": buckets or [[1, 300]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 3, "seed": 2}],
        "experiments": [{"inference": {"max_tokens": 6, "timeout_s": 5}, "concurrency_levels": levels or [2],
                         "requests_per_level": requests, "warmup_requests": 0, **e} for e in experiments],
    }
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _openai(url: str) -> dict[str, Any]:
    return {"provider": "openai", "base_url": url, "model": "m", "api": "chat"}


def _run_reviving(cfg: Path, shards: Path, experiment: str, revive: Callable[[], None]) -> str:
    """The flow's report for ``cfg``, run while a thread calls ``revive`` once the first attempt of
    ``experiment``'s shard has been set aside (its endpoint comes back for the retry). Without preflight:
    its probe would (rightly) refuse a run in which an endpoint is down."""
    from flows.benchmark import benchmark

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            if list(shards.glob(f"{experiment}__*.failed-*.parquet")):
                revive()
                return

    reviver = threading.Thread(target=watch, daemon=True)
    reviver.start()
    try:
        return str(benchmark(config=str(cfg), run_id="r", preflight=False))
    finally:
        stop.set()
        reviver.join(5)


def test_a_down_endpoint_is_retried_and_a_still_failing_shard_is_reported(
    prefect_harness: None, odd_server: str, tmp_path: Path,
) -> None:
    ODD_STATE["flaky_down"] = True
    cfg = _config(tmp_path, "down", [
        {"name": "up", "endpoint": SIM_CFG},
        {"name": "late", "endpoint": _openai(f"{odd_server}/flaky/v1")},
        {"name": "gone", "endpoint": _openai(f"{odd_server}/down/v1")},
    ])
    shards = tmp_path / "results" / "down" / "r" / "shards"
    try:  # the "late" endpoint comes back once its first attempt has failed
        report = _run_reviving(cfg, shards, "late", lambda: ODD_STATE.update(flaky_down=False))
    finally:
        ODD_STATE["flaky_down"] = True
    run = Path(report).parent
    manifest = json.loads((run / "manifest.json").read_text())
    status = {s["shard_id"].split("__")[0]: s for s in manifest["shards"]}
    assert status["up"]["status"] == "ok" and status["late"]["status"] == "ok", status["late"]["error"]
    assert status["gone"]["status"] == "failed"
    assert "failed to connect" in status["gone"]["error"]
    # Each failed attempt's records are kept beside the shard: 1 for "late", 1 + 2 retries for "gone".
    assert len(list(shards.glob("late__*.failed-*.parquet"))) == 1
    gone_attempts = list(shards.glob("gone__*.failed-*.parquet"))
    assert len(gone_attempts) == 3
    for f in gone_attempts:
        rec = pl.read_parquet(f)
        assert rec.height == 4 and (rec["error_kind"] == "connection").all()
    # The run completed with the other shards, and the report names the failed shard and why.
    requests = pl.read_parquet(run / "requests.parquet")
    assert set(requests["experiment"].unique().to_list()) == {"up", "late"} and requests["ok"].all()
    text = (run / "report.md").read_text()
    assert status["gone"]["shard_id"] in text and "failed to connect" in text


def test_an_endpoint_lost_mid_shard_is_measured_again_and_the_report_says_it_was_lost(
    prefect_harness: None, odd_server: str, tmp_path: Path,
) -> None:
    """Both endpoints answer 6 requests, then drop every connection: the shard's last 14 requests fail
    as fast as they are sent, which says nothing about the endpoint's error rate. "back" answers
    again once its first attempt is set aside and is measured whole; "gone" never does and fails."""
    CRASH_STATE.update(after=6, served={}, back=False)
    cfg = _config(tmp_path, "lost", [
        {"name": "back", "endpoint": _openai(f"{odd_server}/crash-back/v1")},
        {"name": "gone", "endpoint": _openai(f"{odd_server}/crash-gone/v1")},
    ], requests=20)
    shards = tmp_path / "results" / "lost" / "r" / "shards"
    report = _run_reviving(cfg, shards, "back", lambda: CRASH_STATE.update(back=True))
    run = Path(report).parent
    manifest = json.loads((run / "manifest.json").read_text())
    status = {s["shard_id"].split("__")[0]: s for s in manifest["shards"]}
    assert status["back"]["status"] == "ok" and status["back"]["errors"] == 0, status["back"]
    assert status["gone"]["status"] == "failed"
    # The attempt that lost its endpoint is kept as measured: 6 answers, then 14 refusals.
    [lost] = shards.glob("back__*.failed-*.parquet")
    rec = pl.read_parquet(lost).sort("request_id")
    assert rec["ok"].to_list() == [True] * 6 + [False] * 14
    assert (rec.filter(~pl.col("ok"))["error_kind"] == "connection").all()
    note = json.loads(lost.with_suffix(".json").read_text())
    assert note["sent_before"] == 6 and note["requests"] == 20 and note["records"] == lost.name
    # The report's numbers are the second attempt's; its warnings say what happened to the first.
    requests = pl.read_parquet(run / "requests.parquet")
    assert set(requests["experiment"].unique().to_list()) == {"back"} and requests["ok"].all()
    assert requests.height == 20
    warnings = manifest["warnings"]
    [back] = [w for w in warnings if w.startswith(f"shard {status['back']['shard_id']}:")]
    assert "1 attempt set aside" in back and "stopped accepting connections after 6 of its 20 requests" in back
    assert f"shards/{lost.name}" in back
    # "gone": its first attempt lost the endpoint, the two retries found it down from the start.
    [gone] = [w for w in warnings if w.startswith(f"shard {status['gone']['shard_id']}:")]
    assert "3 attempts set aside" in gone and "after 6 of its 20 requests" in gone
    assert gone.count("all 20 requests failed to connect") == 2
    assert "all 20 requests failed to connect" in status["gone"]["error"]
    text = (run / "report.md").read_text()
    assert "stopped accepting connections after 6 of its 20 requests" in text
    # What the run cost counts every request it sent, the set-aside attempts' too: "back" 20 + 20,
    # "gone" three attempts of 20 (none of them among the measured records).
    assert "| back | 40 |" in text and "| gone | 60 |" in text, text


def test_a_server_restart_mid_shard_costs_only_the_requests_it_dropped(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    with SimulatedServerProcess(SIM, faults=FaultConfig()) as server:
        assert server.url
        url = server.url
        restarted = threading.Event()

        def restart() -> None:  # once the shard is well under way (40 requests served)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(server_faults(url).values()) < 40:
                time.sleep(0.02)
            server.restart()
            restarted.set()

        t = threading.Thread(target=restart)
        t.start()
        # Open loop: arrivals keep coming at 40/s whatever happens, for ~10 s: ~9 s after the restart
        # begins, for a new server process to import and listen even on a loaded machine.
        _, records = run_sim_shard(url, out, requests=400, concurrency=1, request_rate=40.0, arrival="constant",
                                   max_send_lag_s=10.0, rate_shortfall=0.9)
        t.join()
    assert restarted.is_set()
    assert records.height == 400 and sorted(records["request_id"].to_list()) == list(range(400))
    failed = records.filter(~pl.col("ok"))
    assert failed.height > 0, "the restart dropped no request"
    # Refused while it was down; one in flight when it stopped had its answer cut off.
    kinds = failed["error_kind"].to_list()
    assert "connection" in kinds and set(kinds) <= {"connection", "protocol"}
    assert all(e.startswith("answer cut off") for e in failed.filter(pl.col("error_kind") == "protocol")["error"])
    assert failed["error"].null_count() == 0
    ok = records.filter(pl.col("ok"))
    # Requests before the stop and after the restart succeeded.
    assert ok["t_start"].min() < failed["t_start"].min() and ok["t_start"].max() > failed["t_start"].max()
    assert ok.height + failed.height == 400


def _children_of_session(sid: int) -> list[psutil.Process]:
    procs = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                procs.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return procs


def _simulator_stats_url(sid: int) -> str:
    """The stats URL of the simulated endpoint a run (in session ``sid``) started, once it listens."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for p in _children_of_session(sid):
            try:
                if "fmbench.simulator" not in p.cmdline():  # the endpoint (not the calibration server)
                    continue
                ports = [c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
            if ports:
                return f"http://127.0.0.1:{ports[0]}/fmbench/stats"
        time.sleep(0.05)
    raise AssertionError("the run's simulated endpoint was not found")


def _in_flight(stats_url: str) -> int:
    try:
        with urllib.request.urlopen(stats_url, timeout=5) as r:
            return int(json.load(r)["in_flight"])
    except OSError:
        return 0


def _wait_for(cond: Any, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _check_nothing_half_written(run: Path) -> dict[str, bytes]:
    """Every file a reader would take as complete reads whole; returns the measured shards' bytes."""
    done = {}
    for f in run.rglob("*.parquet"):
        pl.read_parquet(f)
        if f.parent.name == "shards" and (f.parent / f"{f.stem}.json").exists():
            done[f.stem] = f.read_bytes()
    for f in run.rglob("*.json"):
        json.loads(f.read_text())
    return done


def test_sigkill_at_several_points_then_resume_loses_and_duplicates_nothing(fault_cli_env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    slow = {**SIM_CFG, "tpot_ms": 10}
    cfg = _config(tmp_path, "kill", [{"name": "e", "endpoint": slow}], requests=5, levels=[1, 2],
                  buckets=[[1, 200], [200, 400]])
    run = tmp_path / "results" / "kill" / "k"
    points = {
        "bucketing": lambda: (run / "manifest.json").exists(),  # run directory made, prompts not yet
        "mid-shard": lambda: len(list((run / "shards").glob("*.json"))) >= 1,
        "report": lambda: (run / "metrics.parquet").exists(),  # all measured and gathered, report rendering
    }
    kept: dict[str, bytes] = {}
    for point, reached in points.items():
        proc = subprocess.Popen(fmbench_argv("run", str(cfg), "--run-id", "k"), env=fault_cli_env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_for(reached, proc, 240, f"the {point} point")
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Prefect server and the simulated endpoint
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        done = _check_nothing_half_written(run)
        for stem, data in kept.items():  # a shard measured before a kill is never measured again
            assert done.get(stem) == data, f"{stem} changed after the kill at {point}"
        kept = done
    assert len(kept) == 4
    result = subprocess.run(fmbench_argv("run", str(cfg), "--run-id", "k"), env=fault_cli_env, cwd=ROOT,
                            capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for stem, data in kept.items():
        assert (run / "shards" / f"{stem}.parquet").read_bytes() == data, f"{stem} was measured again"
    requests = pl.read_parquet(run / "requests.parquet")
    assert requests.height == 4 * 5
    assert requests.select("shard_id", "request_id").is_duplicated().sum() == 0
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert (run / "report.md").is_file()


def test_a_resume_measures_again_the_shards_whose_files_are_damaged(fault_cli_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    """A shard whose outcome .json cannot be read, or whose records .parquet is missing or cut off,
    is not known to be measured: the resume sets its files aside (kept, named in a warning) and
    measures it again, rather than failing on it at every attempt; the intact shard is reused."""
    cfg = _config(tmp_path, "dmg", [{"name": "e", "endpoint": SIM_CFG}], levels=[1, 2, 3, 4])
    run = tmp_path / "results" / "dmg" / "d"
    argv = fmbench_argv("run", str(cfg), "--run-id", "d", "--no-png")
    first = subprocess.run(argv, env=fault_cli_env, cwd=ROOT, capture_output=True, text=True, timeout=400,
                           check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    shards = run / "shards"
    sid = {c: f"e__syn__1-300__c{c}" for c in (1, 2, 3, 4)}
    before = {c: (shards / f"{s}.json").read_bytes() for c, s in sid.items()}
    (shards / f"{sid[1]}.json").write_text("garbage\n")
    (shards / f"{sid[2]}.parquet").unlink()
    records = (shards / f"{sid[3]}.parquet").read_bytes()
    (shards / f"{sid[3]}.parquet").write_bytes(records[: len(records) // 2])

    resumed = subprocess.run(argv, env=fault_cli_env, cwd=ROOT, capture_output=True, text=True, timeout=400,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr
    aside = sorted(p.name.split(".corrupt-")[0] for p in shards.iterdir() if ".corrupt-" in p.name)
    assert aside == sorted([f"{sid[1]}.json", f"{sid[1]}.parquet", f"{sid[2]}.json", f"{sid[3]}.json",
                            f"{sid[3]}.parquet"])
    for c, reason in ((1, f"its outcome {shards / sid[1]}.json is not readable (not valid JSON: "),
                      (2, f"its records {shards / sid[2]}.parquet are missing"),
                      (3, f"its records {shards / sid[3]}.parquet are not readable parquet (")):
        assert f"shard {sid[c]}: {reason}" in resumed.stderr, resumed.stderr[-3000:]
    assert (shards / f"{sid[4]}.json").read_bytes() == before[4]  # reused, not measured again
    for c in (1, 2, 3):
        assert json.loads((shards / f"{sid[c]}.json").read_text())["status"] == "ok"
    requests = pl.read_parquet(run / "requests.parquet")
    assert requests.height == 4 * 4
    assert requests.select("shard_id", "request_id").is_duplicated().sum() == 0
    assert (run / "report.md").is_file()


@contextlib.contextmanager
def _hang_up_not_ignored() -> Iterator[None]:
    """Start the run with SIGHUP at its default, as a shell in a terminal does: tests started under
    ``nohup`` (or a CI runner that ignores SIGHUP) would hand the run an ignored SIGHUP, which it
    rightly keeps ignoring (the run goes on, as under nohup)."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize(("signum", "runner"), [(signal.SIGINT, "threads"), (signal.SIGHUP, "threads"),
                                               (signal.SIGINT, "dask")], ids=["ctrl-c", "hang-up", "ctrl-c-dask"])
def test_an_interrupt_stops_cleanly_keeps_measured_shards_and_leaves_no_process(
        fault_cli_env: dict[str, str], tmp_path: Path, signum: signal.Signals, runner: str) -> None:
    """Ctrl-C, or the terminal hanging up (an SSH session dropped), mid-shard: the run stops, deletes
    its endpoint and keeps every shard measured before. The shard in flight is stopped before its
    endpoint is deleted and is not kept: its requests would fail on the deleted endpoint, and a
    resumed run would report those failures as the endpoint's."""
    slow = {**SIM_CFG, "tpot_ms": 40, "output_tokens": 10}
    cfg = _config(tmp_path, "ctrlc", [{"name": "e", "endpoint": slow}], requests=8, levels=[1, 2, 3])
    run = tmp_path / "results" / "ctrlc" / "c"
    env = {**fault_cli_env, "FMBENCH_TASK_RUNNER": runner}
    with _hang_up_not_ignored():
        proc = subprocess.Popen(fmbench_argv("run", str(cfg), "--run-id", "c"), env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(list((run / "shards").glob("*.json"))) >= 1, proc, 240, "a shard was measured")
        # Then a request of a later shard is on the simulated endpoint: that shard is in flight.
        stats = _simulator_stats_url(proc.pid)
        _wait_for(lambda: _in_flight(stats) > 0, proc, 120, "the next shard sending")
        os.kill(proc.pid, signum)  # it reaches the CLI process (its children are told by it)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert ("interrupted" if signum == signal.SIGINT else "hung up") in err.splitlines()[-1], err[-3000:]
    # Dask logs tracebacks of its own when the run closes its local cluster (a comm closed under it):
    # there, no frame of fmbench's code may be in one.
    assert not (repo_frames(err) if runner == "dask" else "Traceback" in err), err[-3000:]
    assert "deadlock" not in err, err[-3000:]  # Dask: a task met the workers' warm-up import (_warm_workers)
    assert " | INFO " not in err, err[-3000:]  # Dask's cluster chatter is for --debug (DASK_LOGGING__DISTRIBUTED)
    # The shard in flight was stopped by the run (wherever it ran: a thread, a Dask worker), not left
    # sending while its endpoint was deleted.
    assert "stopped with the run, before its endpoint is deleted" in err, err[-3000:]
    # What was measured is kept, whole and with no error (the endpoint never failed a request of its
    # own); the shard in flight left no complete-looking file.
    measured = list((run / "shards").glob("*.json"))
    assert measured
    for j in measured:
        records = pl.read_parquet(run / "shards" / f"{j.stem}.parquet")
        assert records.height == 8 and records["ok"].all(), (j.stem, records["error"].drop_nulls().to_list()[:3])
    for f in (run / "shards").glob("*.parquet"):
        assert (run / "shards" / f"{f.stem}.json").exists() or ".failed-" in f.name, f
    # No process of the run is left behind (the simulated endpoint was stopped).
    time.sleep(0.5)
    left = [p for p in _children_of_session(proc.pid) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(p.cmdline()) for p in left]
    if runner == "threads" and signum == signal.SIGINT:
        _partial_report_of(run, len(measured))
        # Resumed, the run measures the rest and writes its full report; the partial one is gone.
        resumed = subprocess.run(fmbench_argv("run", str(cfg), "--run-id", "c", "--no-png"), env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=600, check=False)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (run / "report.md").exists() and not (run / "partial").exists()


def _partial_report_of(run: Path, measured: int) -> None:
    """The stopped run's report says to resume it, or to report what it measured: that partial report
    has the measured shards' numbers, in the run's partial/, and leaves the run as it was."""
    from cli.main import main

    before = sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file())
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["report", str(run), "--no-png"]) == 3
    assert f"fmbench report {run} --partial" in err.getvalue()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["report", str(run), "--partial", "--no-png"]) == 0
    assert f"Partial report: {run / 'partial' / 'report.md'}" in out.getvalue()
    metrics = pl.read_parquet(run / "partial" / "metrics.parquet")
    assert metrics.height == measured and metrics["requests"].to_list() == [8] * measured
    assert (metrics["errors"] == 0).all()
    md = (run / "partial" / "report.md").read_text()
    assert f"Partial report: run c has not finished (stopped, or still measuring); this report shows the {measured} " \
        "shard(s) it measured" in md
    assert "fmbench run CONFIG --run-id c" in md
    # The run itself is as it was: its resume measures the rest and writes the full report.
    assert sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file() and "partial" not in p.parts) == before
    assert not (run / "report.md").exists()
    with contextlib.redirect_stdout(io.StringIO()):  # made again: the same
        assert main(["report", str(run), "--partial", "--no-png"]) == 0
    assert pl.read_parquet(run / "partial" / "metrics.parquet").height == measured


def _run_on_a_terminal_that_hangs_up(env: dict[str, str], tmp_path: Path, hang_up: object) -> tuple[int, Path]:
    """Run a three-shard benchmark on a terminal (a pty) and, once a shard is measured and the next is
    in flight, hang the terminal up (every write to it fails with EIO from then on) and send SIGHUP,
    as a dropped SSH session does; the run starts with SIGHUP as ``hang_up`` (its default, or
    ignored as under ``nohup``). Returns the run's exit code and its directory."""
    slow = {**SIM_CFG, "tpot_ms": 40, "output_tokens": 10}
    cfg = _config(tmp_path, "hup", [{"name": "e", "endpoint": slow}], requests=8, levels=[1, 2, 3])
    run = tmp_path / "results" / "hup" / "h"
    master, terminal = os.openpty()
    previous = signal.signal(signal.SIGHUP, hang_up)  # type: ignore[arg-type]
    try:
        proc = subprocess.Popen(fmbench_argv("run", str(cfg), "--run-id", "h"), env=env, cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, start_new_session=True)
    finally:
        signal.signal(signal.SIGHUP, previous)
    os.close(terminal)
    reading = threading.Event()
    reading.set()
    drain = threading.Thread(target=_drain, args=(master, reading), daemon=True)  # a reader, as sshd is
    drain.start()
    try:
        _wait_for(lambda: len(list((run / "shards").glob("*.json"))) >= 1, proc, 240, "a shard was measured")
        time.sleep(0.3)  # the next shard is in flight
        reading.clear()
        drain.join(10)  # (a read in progress would hold the terminal open past its close)
        os.close(master)  # the terminal hangs up: its writes fail with EIO from now on
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    time.sleep(0.5)
    left = [p for p in _children_of_session(proc.pid) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(p.cmdline()) for p in left]
    return proc.returncode, run


def test_a_run_whose_terminal_is_gone_still_cleans_up(fault_cli_env: dict[str, str], tmp_path: Path) -> None:
    """An SSH session dropped: the run's terminal hangs up (every write to it fails from then on) and
    the run gets SIGHUP. It still stops its shard in flight, deletes its endpoint, keeps what it had
    measured and exits 129: its messages on the way out go nowhere instead of failing it."""
    code, run = _run_on_a_terminal_that_hangs_up(fault_cli_env, tmp_path, signal.SIG_DFL)
    assert code == 129
    measured = list((run / "shards").glob("*.json"))
    assert measured
    for j in measured:
        records = pl.read_parquet(run / "shards" / f"{j.stem}.parquet")
        assert records.height == 8 and records["ok"].all(), j.stem
    # the manifest, written on the way out, says the endpoint was deleted
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["e"]
    assert timeline["deleted_at"]


def test_a_run_that_ignores_hang_ups_outlives_its_terminal(fault_cli_env: dict[str, str], tmp_path: Path) -> None:
    """Started with SIGHUP ignored (``nohup``, ``disown``), a run goes on when its terminal goes away,
    and ends as it would have: every shard measured, the report written, exit 0. Its last lines
    (where the report is) go nowhere instead of turning the finished run into an internal error."""
    code, run = _run_on_a_terminal_that_hangs_up(fault_cli_env, tmp_path, signal.SIG_IGN)
    assert code == 0
    shards = sorted(j.stem for j in (run / "shards").glob("*.json"))
    assert len(shards) == 3, shards
    for stem in shards:
        records = pl.read_parquet(run / "shards" / f"{stem}.parquet")
        assert records.height == 8 and records["ok"].all(), stem
    assert (run / "report.md").is_file()
    assert json.loads((run / "manifest.json").read_text())["endpoints"]["e"]["deleted_at"]


def test_a_run_whose_output_pipe_closes_goes_on_to_the_end(fault_cli_env: dict[str, str], tmp_path: Path) -> None:
    """``fmbench run ... 2>&1 | head``: the reader exits after the first lines and every later write
    fails (EPIPE). The run still measures every shard, writes its report, deletes its endpoint and
    exits 0: the lines nobody reads go nowhere instead of turning it into an internal error."""
    slow = {**SIM_CFG, "tpot_ms": 40, "output_tokens": 10}
    cfg = _config(tmp_path, "pipe", [{"name": "e", "endpoint": slow}], requests=8, levels=[1, 2, 3])
    run = tmp_path / "results" / "pipe" / "p"
    proc = subprocess.Popen(fmbench_argv("run", str(cfg), "--run-id", "p"), env=fault_cli_env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.read(20)  # `head -c 20`
        proc.stdout.close()  # and it exits
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0
    assert len(list((run / "shards").glob("*.json"))) == 3
    assert (run / "report.md").is_file()
    assert json.loads((run / "manifest.json").read_text())["endpoints"]["e"]["deleted_at"]
    time.sleep(0.5)
    left = [p for p in _children_of_session(proc.pid) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [" ".join(p.cmdline()) for p in left]


def test_a_run_still_going_cannot_be_resumed_beside_it(fault_cli_env: dict[str, str], tmp_path: Path) -> None:
    """``--run-id`` of a run that is still going (another terminal, a retried deployment): the second
    process is refused with one line before it measures anything, so the endpoint never gets both
    runs' load and the first run's shards and endpoint are left alone. (A run that was killed holds
    nothing: the SIGKILL test above resumes its run ids.)"""
    # 20 s a request, 20 requests: the first run is still going however slowly a loaded machine starts
    # the second process (it is stopped as soon as the second is refused)
    slow = {**SIM_CFG, "tpot_ms": 2000, "output_tokens": 10}
    cfg = _config(tmp_path, "twice", [{"name": "e", "endpoint": slow}], requests=20, levels=[1])
    run = tmp_path / "results" / "twice" / "t"
    argv = fmbench_argv("run", str(cfg), "--run-id", "t")
    first = subprocess.Popen(argv, env=fault_cli_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lock = run_lock_file(str(run.resolve()))
        _wait_for(lambda: lock.is_file() and lock.read_text().startswith(f"pid {first.pid}"), first, 240,
                  "the first run holding its run")
        second = subprocess.run(argv, env=fault_cli_env, cwd=ROOT, capture_output=True, text=True, timeout=240,
                                check=False)
        assert first.poll() is None, "the first run ended before the second was refused: the test proves nothing"
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.splitlines()[-1] == (f"fmbench: error: run t is in progress (pid {first.pid} on "
                                                  f"{platform.node()}); wait for it to end, or stop it, before "
                                                  "resuming it"), second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGINT)  # the first stops as it would have, alone
        _, err = first.communicate(timeout=120)
        assert first.returncode == 130, err[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
    # the first run's manifest is its own: one endpoint timeline, deleted by it
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["e"]
    assert timeline["deleted_at"]


def _drain(fd: int, reading: threading.Event) -> None:
    with contextlib.suppress(OSError):
        while reading.is_set():
            if select.select([fd], [], [], 0.05)[0] and not os.read(fd, 65536):
                return


def test_an_interrupted_deploy_stops_in_its_poll_sleep_not_after_it() -> None:
    """`interrupt_deploy` lands only when the deploying thread runs Python again; a deploy that
    polls SageMaker every 15 s sleeps with `interrupts.sleep`, so the interrupt (and the deletion
    behind it) does not wait for the end of the poll interval."""
    from fmbench.interrupts import deploying, interrupt_deploy, sleep

    ended: list[BaseException] = []
    asleep = threading.Event()

    def deploy() -> None:
        with deploying("slow"):
            asleep.set()
            try:
                sleep(600)  # far longer than the join below: only the interrupt ends it in time
            except KeyboardInterrupt as exc:
                ended.append(exc)

    thread = threading.Thread(target=deploy, daemon=True)
    thread.start()
    assert asleep.wait(30)
    assert interrupt_deploy("slow")
    thread.join(120)
    assert not thread.is_alive() and len(ended) == 1


def test_a_deploy_that_does_not_stop_in_time_is_said_still_running_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A deploy the run cannot stop (in another process, out of `interrupt_deploy`'s reach, that never
    answers) is waited for `STOP_DEPLOY_WAIT_S`, then said to be maybe still running: in the log when
    the wait ends, in the stop summary, and in its timeline in the manifest."""
    import concurrent.futures
    import logging

    from fmbench import sequence
    from fmbench.config import load_config_text
    from fmbench.rundir import load_manifest, open_run

    cfg = load_config_text(yaml.safe_dump({
        "name": "stuck", "output": str(tmp_path / "results"), "buckets": [[1, 200]],
        "datasets": [{"name": "s", "source": "synthetic", "prompts_per_bucket": 1}],
        "experiments": [{"name": "e", "endpoint": SIM_CFG, "concurrency_levels": [1]}]}), source="stuck.yml")
    run = open_run(cfg, run_id="stuck")
    elsewhere: concurrent.futures.Future[Any] = concurrent.futures.Future()  # never resolved

    class DeploysElsewhere:
        def deploy(self, cfg: Any, experiment: str, run: Any) -> concurrent.futures.Future[Any]:
            return elsewhere

    monkeypatch.setattr(sequence, "STOP_DEPLOY_WAIT_S", 0.2)
    lifecycles = sequence.Lifecycles(DeploysElsewhere(), cfg, run, {"e": []}, [])  # type: ignore[arg-type]
    lifecycles._start_deploy("e")
    with caplog.at_level(logging.WARNING, logger="fmbench"):
        lifecycles.stop_all()
    said = "experiment e: its interrupted deploy did not stop within 0 s; its endpoint may still be running"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("fmbench")]  # (not a server thread's)
    waited = next(i for i, line in enumerate(lines) if "still running (not in this process)" in line)
    summary = next(i for i, line in enumerate(lines) if line.startswith("stopped early; still running"))
    assert lines[waited + 1].startswith(said) and said in lines[summary] and waited + 1 < summary, lines
    assert [m for m in lifecycles.left_running if m.startswith(said)] == lifecycles.left_running != []
    timeline = load_manifest(run.url).endpoints["e"]
    assert timeline.delete_error is not None and timeline.delete_error.startswith(said)
    assert timeline.deleted_at is None  # still billed: counted to the run's end
