"""The progress of a run: the tracker the library reports into, the plain lines, and the live table
(`fmbench run` on a real pseudo-terminal: tests/flows/test_live_cli.py)."""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import pytest

from fmbench import live, progress

ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78])")


def _spec(sid: str, requests: int = 10, warmup: int = 2) -> SimpleNamespace:
    return SimpleNamespace(shard_id=sid, experiment=sid.split("__")[0], requests=requests, warmup=warmup)


def test_tracker_follows_shards_and_deploys_and_estimates_the_rest() -> None:
    with progress.watch() as tracker:
        progress.run_planned("r1", [_spec("a__d__b__c1"), _spec("a__d__b__c2"), _spec("b__d__b__c1")])
        with progress.deploy_scope("a", "sagemaker"):
            progress.deploy_status("Creating")
            snap = tracker.snapshot()
            assert live.deploy_lines(snap)[0].startswith("deploy a (sagemaker): Creating, waiting ")
        progress.deploy_ended("a", ok=True)
        progress.shard_ended("a__d__b__c1", "a", "ok", requests=10, cached=True)
        progress.shard_started("a__d__b__c2", 12)
        progress.shard_progressed("a__d__b__c2", 6, 12, 1, 0.042)
        snap = tracker.snapshot()
    assert not live.deploy_lines(snap)  # the deploy ended
    states = {s.shard_id: s for s in snap.shards}
    assert states["a__d__b__c1"].state == "cached" and states["a__d__b__c1"].done == 12
    running = states["a__d__b__c2"]
    assert (running.state, running.done, running.total, running.errors) == ("running", 6, 12, 1)
    assert states["b__d__b__c1"].state == "pending"
    # 6 requests sent so far; 6 + 12 left at that rate
    eta = snap.eta_s()
    elapsed = snap.now - running.started
    assert eta is not None and eta == pytest.approx(18 / 6 * elapsed, rel=1e-6)
    line = live.summary_line(snap)
    assert line.startswith("progress: 1/3 shards finished; a__d__b__c2 6/12 running; elapsed ")
    assert "ETA " in line
    # reports outside a watch go nowhere and cost nothing
    progress.shard_started("x", 1)
    assert "x" not in {s.shard_id for s in tracker.snapshot().shards}


def test_the_table_shows_state_requests_errors_and_ttft() -> None:
    from rich.console import Console

    with progress.watch() as tracker:
        progress.run_planned("r2", [_spec("e__d__1-10__c1"), _spec("e__d__1-10__c4")])
        progress.shard_started("e__d__1-10__c1", 12)
        progress.shard_progressed("e__d__1-10__c1", 12, 12, 0, 0.0815)
        progress.shard_ended("e__d__1-10__c1", "e", "ok", requests=10)
        progress.shard_ended("e__d__1-10__c4", "e", "failed", error="endpoint not deployed")
        out = io.StringIO()
        Console(file=out, width=120).print(live.render_table(tracker.snapshot()))
    text = out.getvalue()
    assert text.startswith("run r2: 2/2 shards finished; 1 failed; elapsed ")
    row = next(ln for ln in text.splitlines() if "e__d__1-10__c1" in ln)
    assert re.search(r"done\s+│\s+12/12\s+│\s+0\s+│\s+[\d.]+\s+│\s+82 ms", row), row
    assert "failed" in next(ln for ln in text.splitlines() if "e__d__1-10__c4" in ln)


def test_without_a_terminal_it_prints_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "PLAIN_EVERY_S", 0.05)
    out = io.StringIO()
    with live.show_progress(out):  # a StringIO is no terminal
        progress.run_planned("r3", [_spec("p__d__b__c1")])
        progress.shard_started("p__d__b__c1", 12)
        progress.shard_progressed("p__d__b__c1", 3, 12, 0, None)
        deadline = time.monotonic() + 30
        while "progress:" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "progress: 0/1 shards finished; p__d__b__c1 3/12 running; elapsed " in out.getvalue()
    assert "\x1b[" not in out.getvalue()


def test_a_deploy_is_shown_ended_when_it_ends_not_when_the_run_takes_its_endpoint() -> None:
    """A deploy started ahead (``deploy_ahead``) ends while the run still measures the previous
    endpoint: the view stops showing it as waiting then, where it ran; a failed one is shown failed."""
    with progress.watch() as tracker:
        with progress.deploy_scope("ahead", "simulated"):
            assert live.deploy_lines(tracker.snapshot())  # waiting
        with pytest.raises(RuntimeError), progress.deploy_scope("broken", "sagemaker"):
            raise RuntimeError("no capacity")
        snap = tracker.snapshot()
        assert not live.deploy_lines(snap)
        states = {d.experiment: (d.status, d.failed) for d in snap.deploys}
        assert states == {"ahead": ("ready", False), "broken": ("failed", True)}
        ended = snap.deploys[0].ended
        progress.deploy_ended("ahead", ok=True)  # the run takes the endpoint later: the end stands
        assert tracker.snapshot().deploys[0].ended == ended
