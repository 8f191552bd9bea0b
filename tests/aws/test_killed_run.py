"""Runs SIGKILLed mid-way leave SageMaker endpoints billing (moto's control plane, the simulated
endpoint behind the SageMaker runtime routes, `fmbench run` as a subprocess): the next run warns
about them, `fmbench cleanup` finds and deletes them, and a resumed run adopts its own endpoint
(no second CreateEndpoint), sends no measured shard again and leaves nothing behind. An endpoint
the resumed run cannot adopt (gone, or failed) is still in its bill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fmbench.config import SimulatedEndpoint
from fmbench.deploy.sagemaker import TAG_EXPERIMENT, resource_name
from fmbench.simulator.process import SimulatedServerProcess
from tests.support.cli import ROOT
from tests.support.sagemaker import (
    EMPTY,
    INSTANCE,
    ROLE,
    TGI_IMAGE,
    by_hand,
    moto_endpoint,
    sm_client,
    sm_inventory,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]



@pytest.fixture(scope="module")
def slow_sim() -> Iterator[str]:
    """A simulated endpoint slow enough (~0.35 s a request) that a run can be killed between shards."""
    server = SimulatedServerProcess(SimulatedEndpoint(provider="simulated", ttft_ms=50, tpot_ms=40,
                                                      output_tokens=8, max_batch=8))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def creates(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of every endpoint moto creates (its server runs in this process)."""
    from moto.sagemaker import models

    names: list[str] = []
    original = models.FakeEndpoint.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        names.append(self.endpoint_name)

    monkeypatch.setattr(models.FakeEndpoint, "__init__", counting)
    return names


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT), AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL="http://127.0.0.1:9")  # a client without endpoint_url never reaches AWS
    return env


def _config(tmp_path: Path, moto: str, sim: str, name: str = "killed", endpoint: dict[str, Any] | None = None,
            **experiment: Any) -> Path:
    cfg = {
        "name": name, "output": str(tmp_path / "results"), "buckets": [[1, 200], [200, 400]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 3, "seed": 2}],
        "experiments": [{
            "name": "sm", "inference": {"max_tokens": 8, "timeout_s": 10}, "concurrency_levels": [1, 2],
            "requests_per_level": 6, "warmup_requests": 0,
            "endpoint": {"provider": "sagemaker", "region": "us-east-1", "endpoint_url": moto,
                         "runtime_endpoint_url": sim, "image_uri": TGI_IMAGE, "instance_type": INSTANCE,
                         "role_arn": ROLE, "payload": "tgi", **(endpoint or {})},
            **experiment,
        }],
    }
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _fmbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "fmbench", *args]


def _kill_mid_run(cfg: Path, run_id: str, env: dict[str, str], log: Path, name: str = "killed",
                  meanwhile: Callable[[], None] | None = None) -> dict[str, bytes]:
    """Start `fmbench run`, SIGKILL it (and its children) once a shard is measured (and ``meanwhile``
    has run, while it is in progress); the measured shards."""
    shards = cfg.parent / "results" / name / run_id / "shards"
    with log.open("w") as out:
        proc = subprocess.Popen(_fmbench("run", str(cfg), "--run-id", run_id), env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not list(shards.glob("*.json")):
                assert proc.poll() is None, f"the run ended before a shard was measured: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "no shard measured in 300 s"
                time.sleep(0.02)
            if meanwhile is not None:
                meanwhile()
                assert proc.poll() is None, "the run ended meanwhile: make its shards longer"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return {p.stem: p.with_suffix(".parquet").read_bytes() for p in shards.glob("*.json")
            if p.with_suffix(".parquet").exists()}


@contextlib.contextmanager
def _deployed_run(cfg: Path, runs: Path, env: dict[str, str], moto: str,
                  log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`fmbench run CONFIG` (a run id of its own) once it has deployed and is about to measure: its
    process and run id; killed on the way out if it is still running."""
    with log.open("w") as out:
        proc = subprocess.Popen(_fmbench("run", str(cfg), "--no-png"), env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (runs.is_dir() and any(runs.glob("*/manifest.json")) and sm_inventory(moto)["endpoints"]):
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the run deployed nothing in 300 s"
                time.sleep(0.05)
            yield proc, next(runs.glob("*/manifest.json")).parent.name
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_fmbench(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_killed_runs_are_found_cleaned_up_and_resumed_by_adoption(
        moto: str, slow_sim: str, creates: list[str], tmp_path: Path) -> None:
    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim)
    by_hand(moto, "team-endpoint")  # not fmbench's: must survive everything below
    first, second = resource_name("sm", "k1"), resource_name("sm", "k2")

    kept = _kill_mid_run(cfg, "k1", env, tmp_path / "k1.log")
    assert kept and first in sm_inventory(moto)["endpoints"]  # the killed run left its endpoint billing
    created_at = sm_client(moto).describe_endpoint(EndpointName=first)["CreationTime"]

    _kill_mid_run(cfg, "k2", env, tmp_path / "k2.log")
    warning = [line for line in (tmp_path / "k2.log").read_text().splitlines() if "earlier fmbench runs" in line]
    assert len(warning) == 1 and "1 endpoint(s)" in warning[0] and "k1" in warning[0]
    assert "fmbench cleanup" in warning[0] and "$" in warning[0]
    assert sorted(sm_inventory(moto)["endpoints"]) == sorted([first, second, "team-endpoint"])

    listed = _cli(["cleanup", str(cfg)], env)  # lists, deletes nothing
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout and second in listed.stdout and "team-endpoint" not in listed.stdout
    assert "6 fmbench resource(s), 2 endpoint(s)" in listed.stdout
    assert len(sm_inventory(moto)["endpoints"]) == 3

    before = json.loads((tmp_path / "results" / "killed" / "k2" / "manifest.json").read_text())["endpoints"]["sm"]
    assert before["created_at"] and before["deleted_at"] is None  # the killed run never deleted it
    cleaned = _cli(["cleanup", str(cfg), "--run-id", "k2", "--yes", "--no-png"], env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"deleted endpoint:{second}" in cleaned.stdout and first not in cleaned.stdout
    assert second not in sm_inventory(moto)["endpoints"] + sm_inventory(moto)["configs"] + sm_inventory(moto)["models"]
    # The killed run's manifest now bills its endpoint up to this deletion (it has no report to render).
    k2 = tmp_path / "results" / "killed" / "k2"
    after = json.loads((k2 / "manifest.json").read_text())["endpoints"]["sm"]
    assert after["deleted_by"] == "fmbench cleanup" and after["deleted_at"] >= before["created_at"]
    assert {k: v for k, v in after.items() if k not in ("deleted_at", "deleted_by")} == {
        k: v for k, v in before.items() if k not in ("deleted_at", "deleted_by")}
    assert "run k2: its manifest bills its endpoints up to this deletion" in cleaned.stdout
    assert not (k2 / "report.md").exists()

    # Resumed, k2 deploys a new endpoint; its cost counts the one cleanup deleted as well.
    resumed2 = _cli(["run", str(cfg), "--run-id", "k2", "--no-png"], env)
    assert resumed2.returncode == 0, resumed2.stderr[-3000:]
    timeline = json.loads((k2 / "manifest.json").read_text())["endpoints"]["sm"]
    assert [(t["created_at"], t["deleted_at"], t["deleted_by"]) for t in timeline["earlier"]] == [
        (after["created_at"], after["deleted_at"], "fmbench cleanup")]
    assert timeline["created_at"] > after["deleted_at"] and timeline["deleted_at"] and not timeline["adopted"]
    from fmbench.deploy import EndpointTimeline
    from fmbench.metrics import benchmark_cost
    from fmbench.report import load_run

    run2 = load_run(str(k2))
    both = benchmark_cost(run2.requests, run2.cfg, run2.shards, run2.endpoints, run2.ended_at).row(0, named=True)
    lives = [benchmark_cost(run2.requests, run2.cfg, run2.shards, {"sm": EndpointTimeline.model_validate(t)},
                            run2.ended_at).row(0, named=True) for t in (after, {**timeline, "earlier": []})]
    assert all(c["cost_usd"] and c["cost_usd"] > 0 for c in lives)
    for key in ("cost_usd", "instance_hours", "deploying_hours", "measuring_hours", "idle_hours"):
        assert both[key] == pytest.approx(lives[0][key] + lives[1][key], rel=1e-9), key
    assert both["billed_from"] == lives[0]["billed_from"] and both["still_billing"] is False
    report2 = (k2 / "report.md").read_text()
    assert "sm (earlier attempt)" in report2 and "(by fmbench cleanup)" in report2  # the endpoint timeline
    assert "plus an earlier attempt's endpoint" in report2 and "deletion by fmbench cleanup" in report2

    resumed = _cli(["run", str(cfg), "--run-id", "k1"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert creates.count(first) == 1, "the resumed run created its endpoint again instead of adopting it"
    assert "adopted endpoint" in resumed.stderr and "earlier fmbench runs" not in resumed.stderr
    run = tmp_path / "results" / "killed" / "k1"
    for stem, data in kept.items():
        assert (run / "shards" / f"{stem}.parquet").read_bytes() == data, f"{stem} was measured again"
    manifest = json.loads((run / "manifest.json").read_text())
    assert sum(1 for s in manifest["shards"] if s.get("status") == "ok") == 4
    timeline = (manifest.get("endpoints") or {}).get("sm")
    if timeline is not None:  # recorded by the run's lifecycle (see test_e2e_cost_matches_the_manifest)
        assert timeline["adopted"] and timeline["created_at"][:19] == created_at.isoformat()[:19]
    assert sm_inventory(moto) == {"endpoints": ["team-endpoint"], "configs": ["team-endpoint"],
                                "models": ["team-endpoint"]}
    final = _cli(["cleanup", str(cfg)], env)
    assert final.returncode == 0 and "0 fmbench resource(s)" in final.stdout


def test_cleanup_while_a_run_is_in_progress_leaves_its_endpoint_to_it(
        moto: str, slow_sim: str, tmp_path: Path) -> None:
    """`fmbench cleanup CONFIG --yes` in another terminal while a run (started without --run-id) is
    measuring: the run's endpoint is listed as in progress and not deleted; the run measures every
    request without an error and deletes its endpoint itself."""
    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim, name="busy", concurrency_levels=[1], requests_per_level=40)
    runs = tmp_path / "results" / "busy"
    with _deployed_run(cfg, runs, env, moto, tmp_path / "run.log") as (proc, run_id):
        endpoint = resource_name("sm", run_id)
        cleaned = _cli(["cleanup", str(cfg), "--yes"], env)
        assert proc.poll() is None, "the run ended before cleanup looked: make its shards longer"
        assert cleaned.returncode == 0, cleaned.stderr[-3000:]
        assert f"run {run_id} of 'busy' is in progress (pid {proc.pid} on " in cleaned.stdout
        assert "deleted" not in cleaned.stdout and endpoint in sm_inventory(moto)["endpoints"]
        assert proc.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    import polars as pl

    records = pl.read_parquet(runs / run_id / "requests.parquet")
    assert records.height >= 80 and records["error"].null_count() == records.height  # every request answered
    assert sm_inventory(moto) == EMPTY  # deleted by the run itself
    after = _cli(["cleanup", str(cfg)], env)
    assert after.returncode == 0 and "0 fmbench resource(s)" in after.stdout


def test_cleanup_include_live_during_a_run_ends_its_endpoint_s_bill_at_the_deletion(
        moto: str, slow_sim: str, tmp_path: Path) -> None:
    """`fmbench cleanup CONFIG --yes --include-live` while a run is measuring deletes the run's
    endpoint; the run's teardown, which finds it gone, bills it up to that deletion (noted by
    cleanup beside the run's manifest), not up to the teardown, and its report says who deleted it."""
    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim, name="live", concurrency_levels=[1], requests_per_level=20)
    runs = tmp_path / "results" / "live"
    with _deployed_run(cfg, runs, env, moto, tmp_path / "run.log") as (proc, run_id):
        endpoint = resource_name("sm", run_id)
        cleaned = _cli(["cleanup", str(cfg), "--yes", "--include-live"], env)
        assert proc.poll() is None, "the run ended before cleanup deleted its endpoint: make its shards longer"
        assert cleaned.returncode == 0, cleaned.stderr[-3000:]
        assert f"deleted endpoint:{endpoint}" in cleaned.stdout
        assert f"run {run_id}: in progress; its teardown bills its endpoints up to this deletion" in cleaned.stdout
        proc.wait(timeout=300)
    note = json.loads((runs / run_id / "deletions" / f"{endpoint}.json").read_text())
    timeline = json.loads((runs / run_id / "manifest.json").read_text())["endpoints"]["sm"]
    assert timeline["deleted_at"] == note["deleted_at"] and timeline["delete_error"] is None
    assert timeline["deleted_by"] == "fmbench cleanup --include-live, during the run"
    assert timeline["created_at"] < timeline["deleted_at"] < timeline["last_shard_at"]  # not the teardown's time
    report = (runs / run_id / "report.md").read_text()
    assert (f"not deleted by the run: deleted by fmbench cleanup --include-live, during the run at "
            f"{datetime.fromisoformat(note['deleted_at']).isoformat()}") in report
    assert sm_inventory(moto) == EMPTY


def test_a_run_killed_after_cleanup_include_live_deleted_its_endpoint_bills_it_up_to_that_deletion(
        moto: str, slow_sim: str, tmp_path: Path) -> None:
    """cleanup --include-live deletes a run's endpoint mid-run, then the run is killed before its
    teardown: its partial report and the resumed run bill that endpoint up to the deletion noted
    beside the manifest, by cleanup (not "deleted outside fmbench at an unknown time")."""
    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim, name="noted", requests_per_level=12)
    endpoint = resource_name("sm", "n1")
    run = tmp_path / "results" / "noted" / "n1"
    said: list[str] = []

    def delete_it() -> None:
        cleaned = _cli(["cleanup", str(cfg), "--yes", "--include-live"], env)
        assert cleaned.returncode == 0, cleaned.stderr[-3000:]
        said.append(cleaned.stdout)

    _kill_mid_run(cfg, "n1", env, tmp_path / "n1.log", name="noted", meanwhile=delete_it)
    assert f"deleted endpoint:{endpoint}" in said[0] and sm_inventory(moto) == EMPTY
    note = json.loads((run / "deletions" / f"{endpoint}.json").read_text())
    killed = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    assert killed["deleted_at"] is None  # (the killed run never wrote it)
    deleted_at = datetime.fromisoformat(note["deleted_at"]).isoformat()
    partial = _cli(["report", str(run), "--partial", "--no-png"], env)
    assert partial.returncode == 0, partial.stderr[-3000:]
    text = (run / "partial" / "report.md").read_text()
    assert f"not deleted by the run: deleted by fmbench cleanup --include-live, during the run at {deleted_at}" in text
    assert "still billing" not in text

    resumed = _cli(["run", str(cfg), "--run-id", "n1", "--no-png"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    [earlier] = timeline["earlier"]
    assert (earlier["created_at"], earlier["deleted_at"], earlier["gone_by"]) == (
        killed["created_at"], note["deleted_at"], None)
    assert earlier["deleted_by"] == note["deleted_by"] == "fmbench cleanup --include-live, during the run"
    assert timeline["created_at"] > note["deleted_at"] and timeline["deleted_by"] is None  # its own, torn down
    assert sm_inventory(moto) == EMPTY


def test_an_endpoint_a_run_kept_is_billed_in_its_report_until_cleanup_deletes_it(
        moto: str, slow_sim: str, tmp_path: Path) -> None:
    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim, name="kept", endpoint={"keep_endpoint": True}, concurrency_levels=[1],
                  requests_per_level=2)
    ran = _cli(["run", str(cfg), "--run-id", "r1", "--no-png"], env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run = tmp_path / "results" / "kept" / "r1"
    assert "NOT deleted (still billing)" in (run / "report.md").read_text()
    # The command that made the run, run id included (run again, it resumes this run).
    assert json.loads((run / "manifest.json").read_text())["command"] == f"fmbench run {cfg} --run-id r1 --no-png"
    kept = resource_name("sm", "r1")
    assert kept in sm_inventory(moto)["endpoints"]

    cleaned = _cli(["cleanup", str(cfg), "--yes", "--no-png"], env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"deleted endpoint:{kept}" in cleaned.stdout and kept not in sm_inventory(moto)["endpoints"]
    assert f"run r1: report with the full cost of its endpoints: {run / 'report.md'}" in cleaned.stdout
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    assert timeline["deleted_by"] == "fmbench cleanup" and timeline["deleted_at"] > timeline["last_shard_at"]
    report = (run / "report.md").read_text()
    assert f"deleted by fmbench cleanup at {timeline['deleted_at'][:19]}" in report  # the cost's basis
    assert f"{timeline['deleted_at'].replace('T', ' ')[:19]} (by fmbench cleanup)" in report  # the timeline
    assert "still billing" not in report

    again = _cli(["cleanup", str(cfg), "--yes", "--no-png"], env)  # nothing left: nothing recorded twice
    assert again.returncode == 0 and "0 fmbench resource(s)" in again.stdout and "report" not in again.stdout


def test_a_killed_attempt_s_endpoint_that_is_gone_or_failed_when_the_run_resumes_is_still_billed(
        moto: str, slow_sim: str, creates: list[str], tmp_path: Path) -> None:
    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim)
    runs = tmp_path / "results" / "killed"
    sm = sm_client(moto)

    # g1: the killed attempt's endpoint is deleted by hand (not by fmbench cleanup): when is not known.
    _kill_mid_run(cfg, "g1", env, tmp_path / "g1.log")
    killed = json.loads((runs / "g1" / "manifest.json").read_text())["endpoints"]["sm"]
    assert killed["in_service_at"] and killed["deleted_at"] is None
    sm.delete_endpoint(EndpointName=resource_name("sm", "g1"))
    deleted_by_hand = time.time()
    resumed = _cli(["run", str(cfg), "--run-id", "g1", "--no-png"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    timeline = json.loads((runs / "g1" / "manifest.json").read_text())["endpoints"]["sm"]
    [gone] = timeline["earlier"]
    last_alive = max((t for t in (killed["in_service_at"], killed["last_shard_at"]) if t),
                     key=lambda t: datetime.fromisoformat(t))
    assert (gone["created_at"], gone["deleted_at"], gone["deleted_by"]) == (
        killed["created_at"], last_alive, "outside fmbench")
    assert deleted_by_hand <= datetime.fromisoformat(gone["gone_by"]).timestamp() <= \
        datetime.fromisoformat(timeline["created_at"]).timestamp()
    # The new endpoint's measuring starts with its own first shard, not the killed attempt's.
    assert timeline["first_shard_at"] >= timeline["in_service_at"] >= gone["gone_by"]
    assert not timeline["adopted"] and timeline["deleted_at"] and creates.count(resource_name("sm", "g1")) == 2
    report = (runs / "g1" / "report.md").read_text()
    assert "gone when the run resumed at" in report and "(deleted outside fmbench at an unknown time)" in report
    assert "more, not included" in report
    assert f"between {last_alive.replace('T', ' ')[:19]} and {gone['gone_by'].replace('T', ' ')[:19]}" in report

    # g2: the killed attempt's endpoint failed: the resumed run deletes it, and knows when.
    _kill_mid_run(cfg, "g2", env, tmp_path / "g2.log")
    killed = json.loads((runs / "g2" / "manifest.json").read_text())["endpoints"]["sm"]
    moto_endpoint(resource_name("sm", "g2")).endpoint_status = "Failed"
    resumed = _cli(["run", str(cfg), "--run-id", "g2", "--no-png"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "is Failed: deleting it and deploying anew" in resumed.stderr
    timeline = json.loads((runs / "g2" / "manifest.json").read_text())["endpoints"]["sm"]
    [failed] = timeline["earlier"]
    assert (failed["created_at"], failed["deleted_by"], failed["gone_by"]) == (
        killed["created_at"], "the resumed run, which found it failed", None)
    assert killed["in_service_at"] < failed["deleted_at"] <= timeline["created_at"]
    report = (runs / "g2" / "report.md").read_text()
    assert "its deletion by the resumed run, which found it failed ($" in report and "not included" not in report
    assert sm_inventory(moto) == {"endpoints": [], "configs": [], "models": []}


def test_a_resumed_run_whose_deploy_fails_before_it_can_adopt_says_the_earlier_endpoint_may_still_run(
        moto: str, slow_sim: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.sagemaker import exceptions, models

    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim)
    run = tmp_path / "results" / "killed" / "f1"
    name = resource_name("sm", "f1")
    _kill_mid_run(cfg, "f1", env, tmp_path / "f1.log")
    killed = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    assert killed["endpoint_name"] == name and killed["deleted_at"] is None  # named from the deploy's start

    describe = models.SageMakerModelBackend.describe_endpoint

    def denied(self: Any, endpoint_name: str) -> dict[str, Any]:
        if endpoint_name != name:  # (the preflight's probe of the permission passes)
            return describe(self, endpoint_name)
        raise exceptions.ValidationError(message=f"not authorized to perform sagemaker:DescribeEndpoint on {name}")

    with monkeypatch.context() as m:  # the resumed deploy cannot look for the endpoint it would adopt
        m.setattr(models.SageMakerModelBackend, "describe_endpoint", denied)
        failed = _cli(["run", str(cfg), "--run-id", "f1", "--no-png"], env)
    assert failed.returncode != 0
    warning = f"endpoint {name} an earlier attempt of this run left was not adopted"
    assert warning in failed.stderr and "may still be running" in failed.stderr
    assert name in sm_inventory(moto)["endpoints"]  # untouched, and said so
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    [left] = timeline["earlier"]
    assert (left["created_at"], left["in_service_at"], left["deleted_at"]) == (
        killed["created_at"], killed["in_service_at"], None)
    assert warning in left["delete_error"]
    assert timeline["created_at"] is None and timeline["deleted_at"] is None  # this attempt's deploy made nothing
    assert timeline["never_created"] and "as the deploy ended before it looked" in left["delete_error"]
    report = (run / "report.md").read_text()
    assert "an earlier attempt's endpoint: 1 x ml.g4dn.12xlarge billed" in report
    assert "the last attempt's deploy created no endpoint; NOT deleted: still billing" in report and warning in report

    # Re-tagged by someone else, it is found and left alone: neither adopted nor deleted, and said so.
    sm = sm_client(moto)
    arn = sm.describe_endpoint(EndpointName=name)["EndpointArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": TAG_EXPERIMENT, "Value": "someone-else"}])
    refused = _cli(["run", str(cfg), "--run-id", "f1", "--no-png"], env)
    assert refused.returncode != 0
    assert f"{warning}, as the deploy found it and did not adopt it (endpoint {name} exists but was not created " \
        "by this fmbench run" in refused.stderr and "): it is still running, billed" in refused.stderr
    assert name in sm_inventory(moto)["endpoints"]
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    [left] = timeline["earlier"]  # (the same endpoint, once)
    assert (left["created_at"], left["deleted_at"]) == (killed["created_at"], None) and timeline["never_created"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": TAG_EXPERIMENT, "Value": "sm"}])

    cleaned = _cli(["cleanup", str(cfg), "--run-id", "f1", "--yes", "--no-png"], env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"deleted endpoint:{name}" in cleaned.stdout and name not in sm_inventory(moto)["endpoints"]
    [left] = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]["earlier"]
    assert left["deleted_by"] == "fmbench cleanup" and left["deleted_at"] > killed["in_service_at"]
    report = (run / "report.md").read_text()
    deleted_at = datetime.fromisoformat(left["deleted_at"]).isoformat()
    assert f"not deleted by the run: deleted by fmbench cleanup at {deleted_at}" in report
    assert "still billing" not in report

    resumed = _cli(["run", str(cfg), "--run-id", "f1", "--no-png"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    # the killed attempt's endpoint, to its deletion by cleanup (the failed attempt's deploy made none)
    assert [(t["created_at"], t["deleted_by"]) for t in timeline["earlier"]] == [
        (killed["created_at"], "fmbench cleanup")]
    assert timeline["deleted_at"] and not timeline["adopted"]
    assert sm_inventory(moto) == {"endpoints": [], "configs": [], "models": []}


def test_an_adoption_that_fails_bills_the_adopted_endpoint_from_its_creation_to_its_deletion(
        moto: str, slow_sim: str, tmp_path: Path) -> None:
    env = _env(tmp_path)
    cfg = _config(tmp_path, moto, slow_sim, endpoint={"deploy_timeout_s": 1})
    run = tmp_path / "results" / "killed" / "a1"
    name = resource_name("sm", "a1")
    _kill_mid_run(cfg, "a1", env, tmp_path / "a1.log")
    killed = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    created = sm_client(moto).describe_endpoint(EndpointName=name)["CreationTime"]
    moto_endpoint(name).endpoint_status = "Updating"  # the resumed run waits for it, and gives up
    resumed = _cli(["run", str(cfg), "--run-id", "a1", "--no-png"], env)
    assert resumed.returncode != 0 and "is Updating: waiting for it" in resumed.stderr
    assert name not in sm_inventory(moto)["endpoints"]  # deleted by the deploy that gave up
    timeline = json.loads((run / "manifest.json").read_text())["endpoints"]["sm"]
    assert timeline["adopted"] and timeline["created_at"][:19] == created.isoformat()[:19]
    assert timeline["in_service_at"] == killed["in_service_at"] and timeline["deleted_at"] > killed["in_service_at"]
    assert timeline["earlier"] == [] and timeline["delete_error"] is None
    report = (run / "report.md").read_text()
    assert "created by an interrupted attempt of this run and adopted" in report and "still billing" not in report
