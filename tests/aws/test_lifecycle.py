"""Endpoint lifecycles on moto's SageMaker control plane with the simulated endpoint behind the
runtime routes: how many endpoints are alive at once (``deploy_ahead``), interrupts (SIGINT,
SIGTERM) during a deploy, and the contract that the inline steps and the Prefect flow run one
faulty config to the same outcomes, teardowns and manifest."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from fmbench.config import parse_config
from fmbench.deploy.sagemaker import resource_name
from tests.support.cli import ROOT, repo_frames
from tests.support.sagemaker import EMPTY, ROLE, TGI_IMAGE, later, sm_inventory

INSTANCE = "ml.g4dn.xlarge"


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of `fmbench` subprocesses: own Prefect home, dummy AWS credentials, no profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update({
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home-lifecycle")),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(ROOT), "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # safety net: nothing reaches AWS
    })
    return env


def _sagemaker(moto: str, runtime: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "sagemaker", "region": "us-east-1", "endpoint_url": moto, "runtime_endpoint_url": runtime,
            "image_uri": TGI_IMAGE, "instance_type": INSTANCE, "role_arn": ROLE, "payload": "tgi", **extra}


def _config(tmp_path: Path, name: str, experiments: dict[str, dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "name": name, "output": str(tmp_path / "results"), "buckets": [[1, 300]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 3, "seed": 1}],
        "experiments": [{"name": n, "endpoint": e, "inference": {"max_tokens": 4}, "concurrency_levels": [1, 2],
                         "requests_per_level": 2, "warmup_requests": 0} for n, e in experiments.items()],
        **top,
    }


def _manifest(report: str) -> dict[str, Any]:
    return json.loads((Path(report).parent / "manifest.json").read_text())


def _t(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def _most_alive_at_once(endpoints: dict[str, dict[str, Any]]) -> int:
    events = sorted([(_t(e["created_at"]), 1) for e in endpoints.values()]
                    + [(_t(e["deleted_at"]), -1) for e in endpoints.values()])  # a delete sorts before a create
    alive = most = 0
    for _, step in events:
        alive += step
        most = max(most, alive)
    return most


@pytest.mark.parametrize(("top", "most"), [({}, 2), ({"deploy_ahead": 0}, 1), ({"parallel_endpoints": True}, 3)],
                         ids=["default", "ahead-0", "parallel"])
def test_each_endpoint_lives_from_its_deploy_to_its_last_shard(moto: str, sim_url: str, tmp_path: Path,
                                                               top: dict[str, Any], most: int) -> None:
    from fmbench.pipeline import run_benchmark

    names = ["first", "second", "third"]
    raw = _config(tmp_path, "lifecycle", {n: _sagemaker(moto, sim_url) for n in names}, **top)
    report = run_benchmark(parse_config(raw, source="lifecycle", base_dir=tmp_path), run_id="life")

    manifest = _manifest(report)
    timeline = manifest["endpoints"]
    assert sorted(timeline) == sorted(names)
    for name in names:
        e = timeline[name]
        assert e["endpoint_name"] == resource_name(name, "life") and e["delete_error"] is None
        assert e["instance_type"] == INSTANCE and e["provider"] == "sagemaker"
        assert _t(e["created_at"]) <= _t(e["in_service_at"]) <= _t(e["first_shard_at"])
        assert _t(e["first_shard_at"]) < _t(e["last_shard_at"]) <= _t(e["deleted_at"])
        shards = [s for s in manifest["shards"] if s["experiment"] == name]
        assert len(shards) == 2 and all(s["status"] == "ok" for s in shards)
        assert _t(e["last_shard_at"]) >= max(_t(s["ended_at"]) for s in shards)
    for before, after in itertools.pairwise(names):  # one after another: deleted before the next measures
        if not top.get("parallel_endpoints"):
            assert _t(timeline[before]["deleted_at"]) <= _t(timeline[after]["first_shard_at"])
    assert _most_alive_at_once(timeline) == most
    if not top:  # the look-ahead deployed the next endpoint while the current one was measured
        assert _t(timeline["second"]["created_at"]) < _t(timeline["first"]["deleted_at"])
    assert sm_inventory(moto) == EMPTY


# ---------------------------------------------------------------- interrupts


def _signal_a_thread_other_than_main(pid: int, signum: int) -> None:
    import ctypes

    for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name), reverse=True):
        status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
        blocked = int(status["SigBlk"].strip(), 16)
        if int(task.name) != pid and not blocked & (1 << (signum - 1)):
            assert ctypes.CDLL(None, use_errno=True).tgkill(pid, int(task.name), int(signum)) == 0
            return
    pytest.fail("no thread of the run accepts the signal")


def _wait_until_creating(proc: subprocess.Popen[str], moto: str, what: str) -> None:
    """Wait until the run's deploy has created its endpoint and waits for it (Creating)."""
    sm = boto3.client("sagemaker", endpoint_url=moto, region_name="us-east-1")
    deadline = time.monotonic() + 300
    while not sm.list_endpoints()["Endpoints"]:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the run never deployed {what}"
        time.sleep(0.1)
    assert sm.list_endpoints()["Endpoints"][0]["EndpointStatus"] == "Creating"


def _interrupt_while_creating(proc: subprocess.Popen[str], moto: str, what: str, signum: signal.Signals,
                              send: Any = None) -> str:
    """Once the run's deploy waits for its Creating endpoint, send ``signum`` (``send(pid, signum)``,
    default `os.kill`); returns the run's stderr once it ended. A run still alive 240 s later fails the
    test with every thread's stack (fmbench's SIGUSR1), to say where it waits."""
    try:
        _wait_until_creating(proc, moto, what)
        (send or os.kill)(proc.pid, signum)
        try:
            return proc.communicate(timeout=240)[1]
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
            err = proc.communicate(timeout=30)[1]
            pytest.fail(f"fmbench run did not end within 240 s of {signum.name}; its stderr ends:\n{err[-12000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _assert_deleted_and_said(moto: str, err: str, name: str, signum: signal.Signals, returncode: int | None,
                             remote: bool = False) -> None:
    assert returncode == (130 if signum == signal.SIGINT else 143), err[-3000:]
    assert sm_inventory(moto) == EMPTY, err[-3000:]
    # Dask logs tracebacks of its own when the run closes its local cluster (a comm closed under it):
    # there, no frame of fmbench's code may be in one.
    assert not (repo_frames(err) if remote else "Traceback" in err), err[-3000:]
    for kind in ("endpoint", "endpoint-config", "model"):
        # A deploy on a Dask worker logs there; the run says what its error said it cleaned up.
        said = f"cleaned up .*{kind}:{name}" if remote else f"deleted {kind} {name}"
        assert re.search(said, err), err[-3000:]
    assert "every endpoint this run deployed is deleted" in err, err[-3000:]
    assert ("interrupted" if signum == signal.SIGINT else "terminated") in err.splitlines()[-1]


@pytest.mark.parametrize(("signum", "runner"), [(signal.SIGINT, "threads"), (signal.SIGTERM, "threads"),
                                               (signal.SIGTERM, "dask")], ids=["SIGINT", "SIGTERM", "SIGTERM-dask"])
def test_an_interrupt_during_a_deploy_deletes_the_endpoint_and_says_so(
    moto: str, sim_url: str, endpoint_states: Any, cli_env: dict[str, str], tmp_path: Path,
    signum: signal.Signals, runner: str,
) -> None:
    """Interrupted while its SageMaker endpoint is Creating, the run deletes it, says so, and the
    manifest ends its timeline; also when the deploy waits on a Dask worker (FMBENCH_TASK_RUNNER=dask),
    where the run's stop reaches it through a Dask Event."""
    raw = _config(tmp_path, "interrupted", {"slow": _sagemaker(moto, sim_url, deploy_timeout_s=900)})
    cfg = tmp_path / "interrupted.yml"
    cfg.write_text(yaml.safe_dump(raw))
    # Started with SIGINT ignored, as a non-interactive shell starts its background jobs (`fmbench run &`
    # in a script, CI runners): the run must still stop on the SIGINT it is sent.
    argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable, "-m", "fmbench", "run", str(cfg), "--run-id", "int"]
    proc = subprocess.Popen(argv, env={**cli_env, "FMBENCH_TASK_RUNNER": runner}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # The kernel may hand a process's signal to any thread that does not block it; Python runs the
    # handler in the main thread only when that thread next runs, so a main thread asleep on the
    # deploy's future would sit a SIGINT out (seen in CI): it is delivered to another thread.
    send = _signal_a_thread_other_than_main if signum == signal.SIGINT else os.kill
    err = _interrupt_while_creating(proc, moto, "its endpoint", signum, send)
    _assert_deleted_and_said(moto, err, resource_name("slow", "int"), signum, proc.returncode, runner == "dask")
    # The manifest says so too: the endpoint's timeline ends with its deletion.
    timeline = json.loads((tmp_path / "results" / "interrupted" / "int" / "manifest.json").read_text())["endpoints"]
    assert timeline["slow"]["deleted_at"] and timeline["slow"]["in_service_at"] is None


def test_a_sigterm_while_the_judge_deploys_deletes_the_judge_and_says_so(
    moto: str, sim_url: str, endpoint_states: Any, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    """A judge endpoint the run deploys after its shards is an endpoint it pays for like any other:
    stopped while it is still Creating, the run deletes it, says so, and the manifest ends its timeline."""
    (tmp_path / "qa.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "answer": f"Answer {i}"}) + "\n" for i in range(4)))
    judge = {"name": "sm", "inference": {"max_tokens": 8, "stream": False, "timeout_s": 10},
             "endpoint": _sagemaker(moto, sim_url, deploy_timeout_s=900)}
    raw = {
        "name": "judged", "output": str(tmp_path / "results"), "buckets": [[1, 200]],
        "datasets": [{"name": "qa", "source": "jsonl", "path": str(tmp_path / "qa.jsonl"), "answer_field": "answer"}],
        "experiments": [{"name": "model", "concurrency_levels": [2], "requests_per_level": 4, "warmup_requests": 0,
                         "endpoint": {"provider": "simulated", "ttft_ms": 2, "tpot_ms": 0.5, "answer_accuracy": 0.5,
                                      "seed": 1}}],
        "evaluation": {"judges": [judge], "evaluate_per_shard": 2},
    }
    cfg = tmp_path / "judged.yml"
    cfg.write_text(yaml.safe_dump(raw))
    argv = [sys.executable, "-m", "fmbench", "run", str(cfg), "--run-id", "jint", "--no-png"]
    proc = subprocess.Popen(argv, env=cli_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = _interrupt_while_creating(proc, moto, "its judge", signal.SIGTERM)
    _assert_deleted_and_said(moto, err, resource_name("judge-sm", "jint"), signal.SIGTERM, proc.returncode)
    timeline = json.loads((tmp_path / "results" / "judged" / "jint" / "manifest.json").read_text())["endpoints"]
    assert timeline["judge-sm"]["deleted_at"] and timeline["judge-sm"]["in_service_at"] is None
    assert timeline["model"]["deleted_at"]  # the experiment's endpoint was measured and gone before


def test_a_sigterm_while_fmbench_evaluate_deploys_a_judge_deletes_it_and_says_so(
    moto: str, sim_url: str, endpoint_states: Any, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    """`fmbench evaluate` on a finished run deploys its judges as a run does, so it stops as a run does:
    terminated while its judge is still Creating, it deletes the judge and says so."""
    from fmbench.pipeline import run_benchmark

    (tmp_path / "qa.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "prompt": f"Question {i}?", "answer": f"Answer {i}"}) + "\n" for i in range(4)))
    raw = {
        "name": "later", "output": str(tmp_path / "results"), "buckets": [[1, 200]],
        "datasets": [{"name": "qa", "source": "jsonl", "path": str(tmp_path / "qa.jsonl"), "answer_field": "answer"}],
        "experiments": [{"name": "model", "concurrency_levels": [2], "requests_per_level": 4, "warmup_requests": 0,
                         "store_text": True, "endpoint": {"provider": "simulated", "ttft_ms": 2, "tpot_ms": 0.5,
                                                          "answer_accuracy": 0.5, "seed": 1}}],
    }
    run = Path(run_benchmark(parse_config(raw, source="later"), run_id="ev", png=False)).parent
    judge = {"name": "sm", "inference": {"max_tokens": 8, "stream": False, "timeout_s": 10},
             "endpoint": _sagemaker(moto, sim_url, deploy_timeout_s=900)}
    evaluation = json.dumps({"judges": [judge], "evaluate_per_shard": 2})
    argv = [sys.executable, "-m", "fmbench", "evaluate", str(run), "--set", f"evaluation={evaluation}", "--no-png"]
    proc = subprocess.Popen(argv, env=cli_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = _interrupt_while_creating(proc, moto, "its judge", signal.SIGTERM)
    _assert_deleted_and_said(moto, err, resource_name("judge-sm", "ev"), signal.SIGTERM, proc.returncode)


_INLINE_RUN = """
import json, logging, sys
from fmbench.config import parse_config
from fmbench.pipeline import run_benchmark
logging.basicConfig(level=logging.INFO, format="%(message)s")
try:
    run_benchmark(parse_config(json.loads(sys.argv[1]), source="inline"), run_id="inl")
except KeyboardInterrupt as exc:
    print(f"stopped by {type(exc).__name__}", file=sys.stderr)
    sys.exit(143)
"""


def test_sigterm_reaches_a_run_without_prefect_and_its_deploy_thread(
    moto: str, sim_url: str, endpoint_states: Any, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    """Without Prefect (no SIGTERM handler of its own), the library turns SIGTERM into an interrupt
    that reaches the deploy waiting in a background thread."""
    raw = _config(tmp_path, "inline-term", {"slow": _sagemaker(moto, sim_url, deploy_timeout_s=900)})
    proc = subprocess.Popen([sys.executable, "-c", _INLINE_RUN, json.dumps(raw)], env=cli_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    sm = boto3.client("sagemaker", endpoint_url=moto, region_name="us-east-1")
    try:
        deadline = time.monotonic() + 240
        while not sm.list_endpoints()["Endpoints"]:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the deploy never created its endpoint"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 143 and "stopped by RunTerminated" in err, err[-3000:]
    assert sm_inventory(moto) == EMPTY, err[-3000:]
    assert f"deleted endpoint {resource_name('slow', 'inl')}" in err, err[-3000:]
    assert "every endpoint this run deployed is deleted" in err, err[-3000:]


# ---------------------------------------------------------------- contract: inline and Prefect agree


@pytest.fixture
def refuse_delete(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto refuses DeleteEndpoint of endpoints whose name contains 'undeletable'."""
    from moto.sagemaker import models
    from moto.sagemaker.exceptions import ResourceInUseException

    original = models.SageMakerModelBackend.delete_endpoint

    def delete_endpoint(self: Any, endpoint_name: str) -> None:
        if "undeletable" in endpoint_name:
            raise ResourceInUseException(f"Cannot delete endpoint {endpoint_name}: refused by the test")
        original(self, endpoint_name)

    monkeypatch.setattr(models.SageMakerModelBackend, "delete_endpoint", delete_endpoint)


# Times, and what depends on this host's load at the moment (client processes, validity flags).
_TIMES = {"started_at", "ended_at", "duration_s", "client_cpu_s", "client_load", "records_url", "processes",
          "valid", "invalid_reason", "created_at", "in_service_at", "first_shard_at", "last_shard_at", "deleted_at",
          "machine", "receive_stamps", "uid"}  # measured values (and the run directory's random id): only whether set


def _normalized(value: Any, run_id: str, names: list[str]) -> Any:
    """The value with timestamps reduced to set/unset and the run's resource names made generic."""
    if isinstance(value, dict):
        return {k: (v is not None if k in _TIMES else _normalized(v, run_id, names)) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v, run_id, names) for v in value]
    if isinstance(value, str):
        for n in names:
            value = value.replace(resource_name(n, run_id), f"<{n}>")
        value = re.sub(r"\d{4}-\d{2}-\d{2}T[\d:.]+(\+0000|\+00:00|Z)?", "TIME", value)  # set-aside attempts
        return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", value)
    return value


def test_inline_steps_and_the_prefect_flow_agree_on_a_faulty_config(
    prefect_harness: None, moto: str, sim_url: str, refuse_delete: None, tmp_path: Path,
) -> None:
    from flows.benchmark import benchmark
    from fmbench.pipeline import run_benchmark

    experiments = {
        "no-role": _sagemaker(moto, sim_url, role_arn=None),  # the deploy fails
        "unreachable": _sagemaker(moto, "http://127.0.0.1:9"),  # every shard fails to connect
        "undeletable": _sagemaker(moto, sim_url),  # measured, then the teardown is refused
    }
    names = list(experiments)
    raw = _config(tmp_path, "contract", experiments)
    raw["experiments"][1]["concurrency_levels"] = [1]  # one shard retried (2 s + 10 s) is enough
    inline = run_benchmark(parse_config(raw, source="contract", base_dir=tmp_path), run_id="inline")
    prefect = benchmark(config=yaml.safe_dump(raw), run_id="prefect")

    sides = {}
    for report, run_id in ((inline, "inline"), (prefect, "prefect")):
        manifest = _manifest(report)
        for key in ("run_id", "command", "storage", "config_dir", "packages", "host", "calibration", "tool_version",
                    "python"):
            manifest.pop(key)
        sides[run_id] = _normalized(manifest, run_id, names)
    assert sides["inline"] == sides["prefect"]

    manifest = sides["inline"]
    status = {s["shard_id"]: (s["status"], s["error"]) for s in manifest["shards"]}
    assert len(status) == 5
    for sid, (state, error) in status.items():
        if sid.startswith("no-role"):
            assert state == "failed" and "endpoint not deployed" in error and "role_arn is required" in error
        elif sid.startswith("unreachable"):
            assert state == "failed" and "failed to connect" in error
        else:
            assert state == "ok" and error is None
    timeline = manifest["endpoints"]
    # the deploy refused the config before it made anything: no endpoint, no bill
    assert not timeline["no-role"]["created_at"] and not timeline["no-role"]["deleted_at"]
    assert timeline["no-role"]["never_created"] and not timeline["unreachable"]["never_created"]
    assert timeline["unreachable"]["deleted_at"] and timeline["unreachable"]["delete_error"] is None
    assert not timeline["undeletable"]["deleted_at"]
    assert "<undeletable>" in timeline["undeletable"]["delete_error"]
    assert "refused by the test" in timeline["undeletable"]["delete_error"]
    assert any("still running" in w and "<undeletable>" in w for w in manifest["warnings"])
    # each of the unreachable shard's three attempts is set aside and named, once, in both runs
    set_aside = [w for w in manifest["warnings"] if "set aside" in w]
    assert len(set_aside) == 1 and set_aside[0].startswith("shard unreachable") and "3 attempts" in set_aside[0]
    # Nothing else is left: both runs' refused endpoints, and nothing of the other experiments.
    left = sm_inventory(moto)
    assert sorted(left["endpoints"]) == sorted(resource_name("undeletable", r) for r in ("inline", "prefect"))
    assert left["configs"] == [] and left["models"] == []
    for report in (inline, prefect):
        assert "failed to connect" in (Path(report).parent / "report.md").read_text()


def test_a_deploy_refused_at_create_endpoint_bills_nothing_and_leaves_nothing(
        moto: str, sim_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SageMaker refuses CreateEndpoint (an instance quota of 0): the model and endpoint config the deploy
    made are deleted, and the run's timeline has no endpoint to bill, not one alive for the seconds the
    deploy took."""
    from moto.sagemaker import exceptions, models

    from fmbench.pipeline import run_benchmark

    def refused(self: Any, *args: Any, **kwargs: Any) -> None:
        raise exceptions.ValidationError(message="ResourceLimitExceeded: the account-level service limit "
                                         f"'{INSTANCE} for endpoint usage' is 0 Instances")

    monkeypatch.setattr(models.SageMakerModelBackend, "create_endpoint", refused)
    raw = _config(tmp_path, "quota", {"refused": _sagemaker(moto, sim_url)})
    report = run_benchmark(parse_config(raw, source="quota", base_dir=tmp_path), run_id="q")
    manifest = _manifest(report)
    assert {s["status"] for s in manifest["shards"]} == {"failed"}
    assert all("ResourceLimitExceeded" in s["error"] for s in manifest["shards"])
    timeline = manifest["endpoints"]["refused"]
    assert (timeline["endpoint_name"], timeline["created_at"], timeline["deleted_at"]) == (
        resource_name("refused", "q"), None, None)
    assert timeline["never_created"] is True
    assert sm_inventory(moto) == EMPTY
    md = Path(report).read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| refused | {resource_name('refused', 'q')}"))
    assert "never created: its deploy ended before CreateEndpoint" in row
    assert "still billing" not in md and "no reason given" not in md  # (a failed shard is not also "invalid")
    cost = next(line for line in md.splitlines() if line.startswith("| refused | 0 |"))
    assert "$0.00 | no endpoint billed: its deploy ended before CreateEndpoint and left nothing" in cost


def test_a_failed_deploy_whose_endpoint_cannot_be_deleted_is_billed_as_still_running(
        moto: str, sim_url: str, endpoint_states: Any, refuse_delete: None, tmp_path: Path) -> None:
    """The endpoint fails to come up and SageMaker refuses its deletion: the run does not record it
    deleted, it bills it as still running and says so among its warnings."""
    from fmbench.pipeline import run_benchmark

    name = resource_name("undeletable", "u")
    later(0.0, endpoint_states, name, "Failed", "the container did not pass the ping", 0.1)
    raw = _config(tmp_path, "stuck", {"undeletable": _sagemaker(moto, sim_url, deploy_timeout_s=60)})
    report = run_benchmark(parse_config(raw, source="stuck", base_dir=tmp_path), run_id="u")
    manifest = _manifest(report)
    timeline = manifest["endpoints"]["undeletable"]
    assert timeline["created_at"] and timeline["deleted_at"] is None
    assert f"could not delete endpoint:{name}" in timeline["delete_error"]
    assert any(f"could not delete endpoint:{name}" in w and "still running" in w for w in manifest["warnings"])
    assert name in sm_inventory(moto)["endpoints"]
    assert "NOT deleted: still billing" in Path(report).read_text()
