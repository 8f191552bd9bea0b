"""Nothing left behind, against moto's SageMaker over real HTTP: a resumed run adopts its own
endpoint (no second CreateEndpoint), `fmbench cleanup` lists and deletes exactly what fmbench
created, and the warning before a deploy names what earlier runs left running."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from fmbench.deploy import deploy_state
from fmbench.deploy.inventory import list_fmbench_resources, parse_age, sagemaker_client
from fmbench.deploy.sagemaker import deploy_sagemaker, resource_name, teardown_sagemaker
from fmbench.errors import ConfigError, DeploymentError, ExitCode
from tests.support.sagemaker import (
    EMPTY,
    INSTANCE,
    ROLE,
    TGI_IMAGE,
    by_hand,
    endpoint_set,
    later,
    moto_endpoint,
    sagemaker_experiment,
    sm_client,
    sm_inventory,
)


def _exp(url: str, name: str = "llama3-8b", **extra: Any) -> Any:
    return sagemaker_experiment(url, name=name, image_uri=TGI_IMAGE, instance_type=INSTANCE, role_arn=ROLE,
                       deploy_timeout_s=30, **extra)


def _mine(tmp_path: Path, moto: str) -> Path:
    """A config 'mine' with one SageMaker experiment 'a' on moto, its output under ``tmp_path``."""
    path = tmp_path / "mine.yml"
    path.write_text(
        f"name: mine\noutput: {tmp_path / 'results'}\nbuckets: [[1, 100]]\ndatasets: [{{name: s, source: synthetic}}]\n"
        f"experiments: [{{name: a, endpoint: {{provider: sagemaker, region: us-east-1, endpoint_url: '{moto}', "
        f"image_uri: '{TGI_IMAGE}', instance_type: {INSTANCE}, role_arn: '{ROLE}'}}}}]\n")
    return path


def _create_calls() -> int:
    """How many endpoints moto's backend ever created (it keeps no call log; count the objects)."""
    from moto.sagemaker import models

    return sum(len(models.sagemaker_backends[acct]["us-east-1"].endpoints)
               for acct in list(models.sagemaker_backends.keys()))


def _when_recreated(name: str, old: Any, then: Any) -> None:
    """Once moto's endpoint ``name`` is no longer ``old`` (deleted and created again), call ``then``.
    ``old`` is read by the caller before anything can replace it."""
    import time

    deadline = time.monotonic() + 20
    while moto_endpoint(name) is None or moto_endpoint(name) is old:
        assert time.monotonic() < deadline, f"endpoint {name} was not deleted and created again"
        time.sleep(0.01)
    then()


# ---------------------------------------------------------------- adoption


def test_second_deploy_with_the_same_run_id_adopts_and_teardown_deletes(moto: str) -> None:
    exp = _exp(moto)
    first = deploy_sagemaker(exp, "run-a", config_name="cfg", poll_s=0.05)
    assert not first.adopted and first.instance_type == INSTANCE and first.instance_count == 1
    assert first.created_at and first.in_service_at and first.created_at <= first.in_service_at
    created = sm_client(moto).describe_endpoint(EndpointName=first.endpoint_name)["CreationTime"]

    again = deploy_sagemaker(exp, "run-a", config_name="cfg", poll_s=0.05)  # the resumed attempt
    assert again.adopted and again.endpoint_name == first.endpoint_name
    assert sm_client(moto).describe_endpoint(EndpointName=first.endpoint_name)["CreationTime"] == created
    assert again.created_at is not None and again.created_at[:19] == created.isoformat()[:19]
    assert sorted(again.created) == sorted(first.created)
    assert teardown_sagemaker(again, exp)
    assert sm_inventory(moto) == EMPTY


def test_a_resumed_run_waits_for_an_endpoint_still_creating(moto: str, endpoint_states: Any) -> None:
    exp = _exp(moto)
    name = resource_name("llama3-8b", "run-c")
    from fmbench.deploy.sagemaker import fmbench_tags

    # what the killed attempt had created
    sm = endpoint_set(moto, name, fmbench_tags("run-c", "llama3-8b", "cfg"))
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    before = _create_calls()

    class InServiceOnceWaiting(logging.Handler):  # the endpoint comes up only once the deploy waits for it
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for it" in record.getMessage():
                waited.append(record.getMessage())
                later(0.2, endpoint_states, name, "InService")

    waited: list[str] = []
    handler = InServiceOnceWaiting()
    logger = logging.getLogger("fmbench.deploy.sagemaker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        handle = deploy_sagemaker(exp, "run-c", config_name="cfg", poll_s=0.05)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert waited and "is Creating" in waited[0]
    assert handle.adopted and _create_calls() == before and handle.earlier_gone_at is None
    assert handle.created_at is not None and handle.in_service_at is not None
    assert handle.in_service_at > handle.created_at
    assert sorted(handle.created) == sorted([f"endpoint:{name}", f"endpoint-config:{name}", f"model:{name}"])
    teardown_sagemaker(handle, exp)
    assert sm_inventory(moto) == EMPTY


def test_a_failed_endpoint_of_the_earlier_attempt_is_replaced(moto: str, endpoint_states: Any) -> None:
    exp = _exp(moto)
    name = resource_name("llama3-8b", "run-f")
    later(0.0, endpoint_states, name, "Failed", "ping health check", 0.1)
    with pytest.raises(DeploymentError):
        deploy_sagemaker(exp, "run-f", poll_s=0.05)
    # A killed attempt would have left it Failed; play that by creating it again and failing it.
    from fmbench.deploy.sagemaker import fmbench_tags

    sm = endpoint_set(moto, name, fmbench_tags("run-f", "llama3-8b", None))
    endpoint_states(name, "Failed", "ping health check")
    old = moto_endpoint(name)
    later(0.0, _when_recreated, name, old, lambda: endpoint_states(name, "InService"))  # the new one comes up
    gone_after = datetime.now(UTC).replace(microsecond=0)  # (the handle's times are to the millisecond)
    handle = deploy_sagemaker(exp, "run-f", poll_s=0.05)
    assert not handle.adopted and handle.deleted_failed_earlier  # the end of the failed endpoint's bill:
    assert gone_after <= datetime.fromisoformat(str(handle.earlier_gone_at)) <= datetime.now(UTC)
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    teardown_sagemaker(handle, exp)
    assert sm_inventory(moto) == EMPTY


def test_an_endpoint_with_the_name_but_not_the_tags_is_never_adopted_or_deleted(moto: str) -> None:
    name = resource_name("llama3-8b", "run-x")
    by_hand(moto, name)
    with pytest.raises(DeploymentError, match="not created by this fmbench run") as caught:
        deploy_sagemaker(_exp(moto), "run-x", poll_s=0.05)
    assert sm_inventory(moto) == {"endpoints": [name], "configs": [name], "models": [name]}
    state = deploy_state(caught.value)  # what the run bills: it found the endpoint and left it alone
    assert state is not None and state.found_earlier and not state.adopted and state.created == []
    assert state.earlier_gone_at is None and state.created_at is None


def test_an_earlier_endpoint_whose_config_has_other_tags_is_left_alone_and_said_found(moto: str) -> None:
    """The run's own endpoint of an earlier attempt, but an endpoint config of its name with other
    fmbench tags: the deploy adopts nothing and deletes nothing, and says it found the endpoint (the
    run then bills it as still running, not as 'ended before it looked')."""
    from fmbench.deploy.sagemaker import fmbench_tags

    name = resource_name("llama3-8b", "run-c")
    endpoint_set(moto, name, fmbench_tags("run-c", "llama3-8b", None),
                 config_tags=fmbench_tags("run-c", "someone-else", None))
    with pytest.raises(DeploymentError, match=f"endpoint-config {name} exists but was not created") as caught:
        deploy_sagemaker(_exp(moto), "run-c", poll_s=0.05)
    assert sm_inventory(moto) == {"endpoints": [name], "configs": [name], "models": [name]}
    state = deploy_state(caught.value)
    assert state is not None and state.found_earlier and not state.adopted and state.created == []
    assert state.earlier_gone_at is None


# ---------------------------------------------------------------- fmbench cleanup


def _two_runs(moto: str) -> tuple[str, str, str]:
    deploy_sagemaker(_exp(moto, name="a"), "run-1", config_name="cfg-one", poll_s=0.05)
    deploy_sagemaker(_exp(moto, name="b"), "run-2", config_name="cfg-two", poll_s=0.05)
    by_hand(moto, "prod-endpoint")
    return resource_name("a", "run-1"), resource_name("b", "run-2"), "prod-endpoint"


def test_inventory_lists_only_fmbench_resources_with_price_and_filters(moto: str) -> None:
    a, b, _ = _two_runs(moto)
    client, region = sagemaker_client("us-east-1", None, moto)
    found = list_fmbench_resources(client, region)
    assert sorted((r.kind, r.name) for r in found) == sorted(
        (k, n) for n in (a, b) for k in ("endpoint", "endpoint-config", "model"))
    endpoint = next(r for r in found if r.kind == "endpoint" and r.name == a)
    from fmbench.pricing import instance_price

    assert endpoint.instance_type == INSTANCE and endpoint.instance_count == 1
    assert endpoint.hourly_usd == pytest.approx(instance_price(INSTANCE, "us-east-1").hourly_usd)
    assert endpoint.run_id == "run-1" and endpoint.config_name == "cfg-one" and endpoint.experiment == "a"
    assert {r.name for r in list_fmbench_resources(client, region, run_id="run-2")} == {b}
    assert {r.name for r in list_fmbench_resources(client, region, config_name="cfg-one")} == {a}
    assert list_fmbench_resources(client, region, older_than_s=3600) == []
    assert {r.name for r in list_fmbench_resources(client, region, exclude_run_id="run-1")} == {b}


def test_cleanup_lists_without_yes_and_deletes_exactly_fmbench_resources_with_it(
        moto: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, hand = _two_runs(moto)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)  # --region mode: the standard endpoint setting
    assert main(["cleanup", "--region", "us-east-1"]) == 0
    out = capsys.readouterr().out
    assert "6 fmbench resource(s), 2 endpoint(s)" in out and a in out and b in out and hand not in out
    assert "nothing deleted" in out
    assert len(sm_inventory(moto)["endpoints"]) == 3

    assert main(["cleanup", "--region", "us-east-1", "--run-id", "run-1", "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"deleted endpoint:{a}" in out and b not in out
    assert main(["cleanup", "--region", "us-east-1", "--config-name", "cfg-two", "--older-than", "1h", "--yes"]) == 0
    assert "0 fmbench resource(s)" in capsys.readouterr().out
    assert sorted(sm_inventory(moto)["endpoints"]) == sorted([b, hand])

    cfg = tmp_path / "c.yml"  # the region (and API URL) from a config
    cfg.write_text(
        "name: cfg-two\nbuckets: [[1, 100]]\ndatasets: [{name: s, source: synthetic}]\n"
        f"experiments: [{{name: b, endpoint: {{provider: sagemaker, region: us-east-1, endpoint_url: '{moto}', "
        f"image_uri: '{TGI_IMAGE}', instance_type: {INSTANCE}, role_arn: '{ROLE}'}}}}]\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert main(["cleanup", str(cfg), "--yes"]) == 0
    assert f"deleted endpoint:{b}" in capsys.readouterr().out
    assert sm_inventory(moto) == {"endpoints": [hand], "configs": [hand], "models": [hand]}


def test_cleanup_errors_are_one_line(moto: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["cleanup", "--region", "us-east-1", "--older-than", "2 weeks"]) == ExitCode.BAD_INPUT
    assert "--older-than '2 weeks'" in capsys.readouterr().err
    # The safety-net endpoint URL of these tests is a closed port: unreachable API.
    assert main(["cleanup", "--region", "us-east-1"]) == ExitCode.ENVIRONMENT
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmbench: error: listing SageMaker endpoints in us-east-1:") and "\n" not in err
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert main(["cleanup"]) == ExitCode.ENVIRONMENT
    assert "no AWS region" in capsys.readouterr().err
    assert parse_age("90m") == 5400 and parse_age("3d") == 3 * 86400
    with pytest.raises(ConfigError):
        parse_age("soon")


def test_cleanup_names_refused_credentials(moto: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    assert main(["cleanup", "--region", "us-east-1"]) == ExitCode.ENVIRONMENT
    assert "no AWS credentials found" in capsys.readouterr().err


# ---------------------------------------------------------------- runs in progress


def _live_until(moto: str, name: str) -> datetime:
    from fmbench.deploy.heartbeat import live_until
    from fmbench.deploy.sagemaker import resource_tags

    sm = sm_client(moto)
    until = live_until(resource_tags(sm, sm.describe_endpoint(EndpointName=name)["EndpointArn"]))
    assert until is not None
    return until


def _as_if_on(moto: str, name: str, host: str, until: datetime) -> None:
    """Tag the three resources of ``name`` as a run on ``host`` renews them (`fmbench.deploy.heartbeat`)."""
    sm = sm_client(moto)
    arns = [sm.describe_endpoint(EndpointName=name)["EndpointArn"],
            sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"],
            sm.describe_model(ModelName=name)["ModelArn"]]
    for arn in arns:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "fmbench:host", "Value": host},
                                           {"Key": "fmbench:live-until", "Value": until.isoformat()}])


def test_a_run_renews_its_resources_tags_while_in_progress_and_marks_them_ended_after(
        moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import platform
    import time

    from fmbench.deploy.heartbeat import end_heartbeats

    monkeypatch.setenv("FMBENCH_LIVE_RENEW_S", "0.2")
    name = resource_name("h", "hb-run")
    before = datetime.now(UTC)
    deploy_sagemaker(_exp(moto, name="h"), "hb-run", config_name="hb", poll_s=0.05)
    first = _live_until(moto, name)
    # Ahead of when it was written (not of now: it is 1 s ahead here, to the second, and the deploy
    # may take longer than that on a loaded machine).
    assert first > before
    deadline = time.monotonic() + 20
    while _live_until(moto, name) <= first:  # renewed by the run's thread
        assert time.monotonic() < deadline, "live-until was not renewed"
        time.sleep(0.05)
    client, region = sagemaker_client("us-east-1", None, moto)
    assert {r.host for r in list_fmbench_resources(client, region)} == {platform.node()}
    end_heartbeats("hb-run")  # the run ended, keeping its endpoint
    ended = _live_until(moto, name)
    assert ended <= datetime.now(UTC)
    time.sleep(1.0)  # five renewal periods: nothing renews it any more
    assert _live_until(moto, name) == ended


def test_cleanup_leaves_the_resources_of_a_run_in_progress_here_or_on_another_host(
        moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from fmbench.config import load_config_text
    from fmbench.deploy.heartbeat import end_heartbeats
    from fmbench.rundir import exclusive_run

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    cfg = load_config_text(f"name: live\noutput: {tmp_path}\nbuckets: [[1, 100]]\n"
                           "datasets: [{name: s, source: synthetic}]\nexperiments: [{name: x, endpoint: {provider: "
                           "simulated}}]\n")
    here = resource_name("x", "run-here")
    there = resource_name("x", "run-there")
    with exclusive_run(cfg, None, "run-here"):  # a run in progress in this host (what `fmbench run` holds)
        deploy_sagemaker(_exp(moto, name="x"), "run-here", config_name="live", poll_s=0.05)
        deploy_sagemaker(_exp(moto, name="x"), "run-there", config_name="live", poll_s=0.05)
        end_heartbeats("run-there")
        _as_if_on(moto, there, "other-host", datetime.now(UTC) + timedelta(minutes=5))  # renewed there

        assert main(["cleanup", "--region", "us-east-1", "--yes"]) == 0
        out = capsys.readouterr().out
        assert "6 fmbench resource(s), 2 endpoint(s)" in out and "of which 2 run(s) in progress" in out
        assert f"run run-here of 'live' is in progress (pid {__import__('os').getpid()} on " in out
        assert "run run-there of 'live' is in progress (on other-host, renewed until " in out
        assert "deleted" not in out
        assert sorted(sm_inventory(moto)["endpoints"]) == sorted([here, there])

        # Lapsed on the other host (killed there): not in progress any more.
        _as_if_on(moto, there, "other-host", datetime.now(UTC) - timedelta(seconds=1))
        assert main(["cleanup", "--region", "us-east-1", "--yes"]) == 0
        out = capsys.readouterr().out
        assert f"deleted endpoint:{there}" in out and here not in out.split("in progress (pid")[-1]
        assert sm_inventory(moto)["endpoints"] == [here]
        assert main(["cleanup", "--region", "us-east-1"]) == 0  # listed, marked, and said left to the run
        listed = capsys.readouterr().out
        assert any(line.split()[:2] == ["endpoint", here] and line.endswith("in progress")
                   for line in listed.splitlines())
        assert "its resources are left to it, it deletes them when it ends" in listed
    # Its process ended (killed or not): its lock is free, so it is not in progress, whatever its tags say.
    assert main(["cleanup", "--region", "us-east-1", "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"deleted endpoint:{here}" in out and "in progress" not in out
    assert out.count(f"deleted endpoint:{here}") == 1 and "deleted endpoint" not in capsys.readouterr().err
    assert sm_inventory(moto) == EMPTY


def test_cleanup_include_live_deletes_a_run_in_progress_and_config_selects_its_own_runs(
        moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    from fmbench.deploy.heartbeat import end_heartbeats

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    mine, theirs = resource_name("a", "r-mine"), resource_name("b", "r-theirs")
    deploy_sagemaker(_exp(moto, name="a"), "r-mine", config_name="mine", poll_s=0.05)
    deploy_sagemaker(_exp(moto, name="b"), "r-theirs", config_name="theirs", poll_s=0.05)
    for rid in ("r-mine", "r-theirs"):
        end_heartbeats(rid)
    _as_if_on(moto, mine, "other-host", datetime.now(UTC) + timedelta(minutes=5))
    cfg = tmp_path / "mine.yml"
    cfg.write_text(
        "name: mine\nbuckets: [[1, 100]]\ndatasets: [{name: s, source: synthetic}]\n"
        f"experiments: [{{name: a, endpoint: {{provider: sagemaker, region: us-east-1, endpoint_url: '{moto}', "
        f"image_uri: '{TGI_IMAGE}', instance_type: {INSTANCE}, role_arn: '{ROLE}'}}}}]\n")
    # CONFIG: its own runs only; theirs is another config's.
    assert main(["cleanup", str(cfg), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "3 fmbench resource(s), 1 endpoint(s)" in out and theirs not in out and "deleted" not in out
    assert main(["cleanup", str(cfg), "--yes", "--include-live"]) == 0
    out = capsys.readouterr().out
    assert "deleted as well (--include-live)" in out and f"deleted endpoint:{mine}" in out
    assert sm_inventory(moto)["endpoints"] == [theirs]
    assert main(["cleanup", str(cfg), "--config-name", "x", "--any-config"]) == ExitCode.BAD_INPUT
    assert main(["cleanup", str(cfg), "--any-config", "--yes"]) == 0
    assert f"deleted endpoint:{theirs}" in capsys.readouterr().out
    assert sm_inventory(moto) == EMPTY


def test_cleanup_include_live_leaves_the_manifest_of_a_run_in_progress_to_that_run(
        moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run in progress holds its manifest: cleanup --include-live deletes its endpoint, notes when
    beside the manifest for the run's teardown, and succeeds (the run's manifest is not cleanup's to write)."""
    from fmbench.deploy.heartbeat import end_heartbeats
    from fmbench.pipeline import load_benchmark_config
    from fmbench.rundir import (
        EndpointTimeline,
        exclusive_run,
        load_manifest,
        noted_deletion,
        open_run,
        with_noted_deletions,
    )

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    path = _mine(tmp_path, moto)
    cfg = load_benchmark_config(str(path))
    name = resource_name("a", "r-live")
    run = open_run(cfg, run_id="r-live")
    run.record_endpoint(EndpointTimeline(experiment="a", provider="sagemaker", endpoint_name=name,
                                         created_at=datetime.now(UTC).isoformat()))
    with exclusive_run(cfg, None, "r-live"):
        deploy_sagemaker(_exp(moto, name="a"), "r-live", config_name="mine", poll_s=0.05)
        assert main(["cleanup", str(path), "--yes", "--include-live"]) == 0
        end_heartbeats("r-live")
    out = capsys.readouterr().out
    assert f"deleted endpoint:{name}" in out and "deleted as well (--include-live)" in out
    assert f"run r-live: in progress; its teardown bills its endpoints up to this deletion (noted in {run.url})" in out
    assert sm_inventory(moto) == EMPTY
    timeline = load_manifest(run.url).endpoints["a"]
    assert timeline.deleted_at is None  # (the run's teardown writes it, from the note beside the manifest)
    note = noted_deletion(run.url, name, timeline.created_at)
    assert note is not None and note.deleted_by == "fmbench cleanup --include-live, during the run"
    assert timeline.created_at is not None and note.deleted_at >= timeline.created_at
    assert noted_deletion(run.url, name, "2999-01-01T00:00:00+00:00") is None  # a later endpoint of that name
    assert noted_deletion(run.url, "another", None) is None and noted_deletion(run.url, None, None) is None
    # Killed after that, and not resumed: its report reads the note (the manifest still says running).
    shown = with_noted_deletions(run.url, load_manifest(run.url)).endpoints["a"]
    assert (shown.deleted_at, shown.deleted_by) == (note.deleted_at, note.deleted_by)
    assert load_manifest(run.url).endpoints["a"].deleted_at is None  # (read, not written)


def test_cleanup_without_the_config_records_each_deletion_in_the_run_this_host_ran(
        moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CONFIG, cleanup finds a run that ran on this host from its lock, wherever its output
    was: an ended run gets its endpoint's deletion in its manifest, a run in progress (--include-live)
    a note beside it. A run this host did not run is named, with the way to record it."""
    import uuid

    from fmbench.deploy.heartbeat import end_heartbeats
    from fmbench.pipeline import load_benchmark_config
    from fmbench.rundir import EndpointTimeline, exclusive_run, load_manifest, noted_deletion, open_run

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    path = _mine(tmp_path, moto)
    cfg = load_benchmark_config(str(path))
    tag = uuid.uuid4().hex[:6]  # (locks outlive a test: run ids of their own)
    ended, live, other = f"ended-{tag}", f"live-{tag}", f"other-{tag}"
    elsewhere = str(tmp_path / "elsewhere")  # (the ended run was given --output)
    urls = {}
    for rid, output in ((ended, elsewhere), (live, None)):
        run = open_run(cfg, output, run_id=rid)
        run.record_endpoint(EndpointTimeline(experiment="a", provider="sagemaker", endpoint_name=resource_name("a", rid),
                                             created_at=datetime.now(UTC).isoformat()))
        urls[rid] = run.url
    with exclusive_run(cfg, elsewhere, ended):
        deploy_sagemaker(_exp(moto, name="a"), ended, config_name="mine", poll_s=0.05)
        end_heartbeats(ended)
    deploy_sagemaker(_exp(moto, name="a"), other, config_name="mine", poll_s=0.05)  # (as if run on another host)
    end_heartbeats(other)
    from fmbench.deploy.heartbeat import TAG_HOST
    client = sm_client(moto)
    arn = client.describe_endpoint(EndpointName=resource_name("a", other))["EndpointArn"]
    client.add_tags(ResourceArn=arn, Tags=[{"Key": TAG_HOST, "Value": "far-host"}])
    with exclusive_run(cfg, None, live):
        deploy_sagemaker(_exp(moto, name="a"), live, config_name="mine", poll_s=0.05)
        assert main(["cleanup", "--region", "us-east-1", "--yes", "--include-live"]) == 0
        end_heartbeats(live)
    out = capsys.readouterr().out
    assert all(f"deleted endpoint:{resource_name('a', rid)}" in out for rid in (ended, live, other))
    assert sm_inventory(moto) == EMPTY
    timeline = load_manifest(urls[ended]).endpoints["a"]
    assert timeline.deleted_by == "fmbench cleanup" and timeline.deleted_at is not None
    assert f"run {ended}: its manifest bills its endpoints up to this deletion" in out
    note = noted_deletion(urls[live], resource_name("a", live), None)
    assert note is not None and note.deleted_at == timeline.deleted_at  # (one deletion request, one time)
    assert load_manifest(urls[live]).endpoints["a"].deleted_at is None  # (the run's own teardown writes it)
    assert f"run {live}: in progress; its teardown bills its endpoints up to this deletion (noted in {urls[live]})" in out
    for rid in (ended, live):  # (the listing, before the deletion, says where each run's report is)
        assert f"  run {rid} of 'mine' is stored at {urls[rid]}\n" in out
    assert f"run {other} of 'mine' is stored" not in out
    assert (f"run {other}: not found on this host (it ran on far-host), so its report counts its endpoints only up "
            "to its end; give its config, fmbench cleanup CONFIG --yes, to record their deletion in it") in out


def test_cleanup_without_the_config_finds_a_run_stored_on_s3_from_its_endpoints_tags(
        moto: str, s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stored on S3 tags its resources with its URL, so cleanup without CONFIG on a host that
    did not run it (no lock here) records the deletion in its manifest. A resumed run's adoption
    moves the tag to where it is stored now, or removes it when that is a local directory (never
    tagged); a tag that does not lead to that run's manifest is named, not written to."""
    import uuid

    from fmbench.deploy.heartbeat import end_heartbeats
    from fmbench.pipeline import load_benchmark_config
    from fmbench.rundir import EndpointTimeline, load_manifest, open_run

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    cfg = load_benchmark_config(str(_mine(tmp_path, moto)))
    tag = uuid.uuid4().hex[:6]
    far, local, stray = f"far-{tag}", f"local-{tag}", f"stray-{tag}"
    run = open_run(cfg, f"{s3_bucket}/results", run_id=far)  # (opened, never held here: no lock on this host)
    run.record_endpoint(EndpointTimeline(experiment="a", provider="sagemaker", endpoint_name=resource_name("a", far),
                                         created_at=datetime.now(UTC).isoformat()))
    assert run.url.startswith("s3://")
    deploy_sagemaker(_exp(moto, name="a"), far, config_name="mine", run_url=f"{s3_bucket}/before", poll_s=0.05)
    deploy_sagemaker(_exp(moto, name="a"), far, config_name="mine", run_url=run.url, poll_s=0.05)  # (adopted)
    deploy_sagemaker(_exp(moto, name="a"), local, config_name="mine", run_url=f"{s3_bucket}/before", poll_s=0.05)
    deploy_sagemaker(_exp(moto, name="a"), local, config_name="mine", run_url=str(tmp_path / "local"), poll_s=0.05)
    deploy_sagemaker(_exp(moto, name="a"), stray, config_name="mine", run_url=f"{s3_bucket}/nowhere", poll_s=0.05)
    for rid in (far, local, stray):
        end_heartbeats(rid)
    listed = {(r.run_id, r.kind): r.run_url for r in list_fmbench_resources(sm_client(moto), "us-east-1")}
    assert {listed[(far, kind)] for kind in ("model", "endpoint-config", "endpoint")} == {run.url}
    assert {listed[(local, kind)] for kind in ("model", "endpoint-config", "endpoint")} == {None}
    assert listed[(stray, "endpoint")] == f"{s3_bucket}/nowhere"

    assert main(["cleanup", "--region", "us-east-1", "--yes"]) == 0
    out = capsys.readouterr().out
    assert sm_inventory(moto) == EMPTY
    timeline = load_manifest(run.url).endpoints["a"]
    assert timeline.deleted_by == "fmbench cleanup" and timeline.deleted_at is not None
    assert f"run {far}: its manifest bills its endpoints up to this deletion" in out
    assert f"  run {far} of 'mine' is stored at {run.url}\n" in out
    assert f"run {stray} of 'mine' is stored" not in out and f"run {local} of 'mine' is stored" not in out
    assert (f"run {stray}: not found on this host nor at {s3_bucket}/nowhere (its endpoints' tags), so its report "
            "counts its endpoints only up to its end\n") in out
    assert f"run {local}: not found on this host, so its report counts its endpoints only up to its end; give" in out


def test_cleanup_deletes_an_endpoint_whose_run_id_tag_names_no_run_and_says_it_recorded_nothing(
        moto: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """fmbench never writes such a tag, but anyone with AWS access can: cleanup with CONFIG still
    deletes what is fmbench's and names that run, reads and writes outside its output nothing, and
    exits 1 (its deletion went unrecorded)."""
    from fmbench.deploy.heartbeat import end_heartbeats
    from fmbench.deploy.sagemaker import TAG_RUN_ID

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    path = _mine(tmp_path, moto)
    deploy_sagemaker(_exp(moto, name="a"), "retagged", config_name="mine", poll_s=0.05)
    end_heartbeats("retagged")
    sm = sm_client(moto)
    name = resource_name("a", "retagged")
    for arn in (sm.describe_endpoint(EndpointName=name)["EndpointArn"],
                sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"],
                sm.describe_model(ModelName=name)["ModelArn"]):
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": TAG_RUN_ID, "Value": "../up"}])
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()  # (the deploy's lines)
    assert main(["cleanup", str(path), "--yes"]) == ExitCode.PARTIAL_FAILURE
    out, err = capsys.readouterr()
    assert f"deleted endpoint:{name}" in out and sm_inventory(moto) == EMPTY
    assert "is stored at" not in out
    assert err == ("fmbench: run ../up: its manifest does not have its endpoints' deletion: its endpoints' tag "
                   "fmbench:run-id '../up': use letters, digits, '-', '_' and '.' only\n")
    assert sorted(tmp_path.rglob("*")) == before


# ---------------------------------------------------------------- warning before a deploy


def test_preflight_warns_once_about_endpoints_of_earlier_runs(moto: str, caplog: pytest.LogCaptureFixture) -> None:
    from fmbench.preflight import warn_live_endpoints

    deploy_sagemaker(_exp(moto, name="a"), "old-run", config_name="old", poll_s=0.05)  # (no run holds it)
    by_hand(moto, "prod-endpoint")
    ep = _exp(moto).endpoint
    caplog.set_level(logging.DEBUG, logger="fmbench.preflight")
    assert warn_live_endpoints([ep, ep], run_id="new-run") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 endpoint(s) of earlier fmbench runs still running in us-east-1" in warnings[0]
    assert "old-run" in warnings[0] and "fmbench cleanup" in warnings[0] and "$" in warnings[0]
    caplog.clear()
    assert warn_live_endpoints([ep], run_id="old-run") == 0  # a resumed run's own endpoint is not "earlier"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # A failing list call never fails the run: a debug note only.
    broken = ep.model_copy(update={"endpoint_url": "http://127.0.0.1:9"})
    assert warn_live_endpoints([broken]) == 0
    assert [r for r in caplog.records if r.levelno == logging.DEBUG and "could not list" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- the bill, end to end


def test_e2e_cost_matches_the_manifest(moto: str, sim_url: str, tmp_path: Any) -> None:
    """A run on moto: the reported cost is instance-hours from the manifest's create to delete times the price."""
    import datetime as dt
    import json

    from fmbench.config import parse_config
    from fmbench.metrics import benchmark_cost
    from fmbench.pipeline import run_benchmark
    from fmbench.report import load_run

    cfg = parse_config({
        "name": "bill", "output": str(tmp_path / "results"), "buckets": [[1, 300]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 3}],
        "experiments": [{
            "name": "sm", "inference": {"max_tokens": 6}, "concurrency_levels": [1, 2], "requests_per_level": 3,
            "warmup_requests": 0, "pricing": {"hourly_usd": 36.0, "instance_count": 2},
            "endpoint": {"provider": "sagemaker", "region": "us-east-1", "endpoint_url": moto,
                         "runtime_endpoint_url": sim_url, "image_uri": TGI_IMAGE, "instance_type": INSTANCE,
                         "instance_count": 2, "role_arn": ROLE, "payload": "tgi"},
        }],
    }, source="bill", base_dir=tmp_path)
    report = run_benchmark(cfg, run_id="bill-run")
    assert sm_inventory(moto) == EMPTY
    run_dir = Path(report).parent
    manifest = json.loads((run_dir / "manifest.json").read_text())
    timeline = manifest["endpoints"]["sm"]
    created = dt.datetime.fromisoformat(timeline["created_at"])
    deleted = dt.datetime.fromisoformat(timeline["deleted_at"])
    assert timeline["instance_count"] == 2 and timeline["instance_type"] == INSTANCE
    expected = (deleted - created).total_seconds() / 3600.0 * 2 * 36.0
    run = load_run(str(run_dir))
    cost = benchmark_cost(run.requests, run.cfg, run.shards, run.endpoints, run.ended_at).row(0, named=True)
    assert cost["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert cost["still_billing"] is False
    assert sum(cost[f"{p}_cost_usd"] for p in ("deploying", "measuring", "idle")) == pytest.approx(expected)
    assert cost["measuring_hours"] > 0


def test_a_run_stored_on_s3_tags_the_endpoint_it_keeps_with_its_url_for_cleanup_from_any_host(
        moto: str, s3_bucket: str, sim_url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole run with its output on S3 and its endpoint kept: the endpoint's tags name the run's
    URL, and cleanup without the config records the deletion in that run's manifest there (found
    here from this host's lock too: the test above takes the tag's way alone)."""
    from fmbench.config import parse_config
    from fmbench.pipeline import run_benchmark
    from fmbench.rundir import load_manifest

    cfg = parse_config({
        "name": "kept-s3", "output": f"{s3_bucket}/results", "buckets": [[1, 300]],
        "datasets": [{"name": "syn", "source": "synthetic", "prompts_per_bucket": 2}],
        "experiments": [{
            "name": "sm", "inference": {"max_tokens": 4}, "concurrency_levels": [1], "requests_per_level": 2,
            "warmup_requests": 0,
            "endpoint": {"provider": "sagemaker", "region": "us-east-1", "endpoint_url": moto,
                         "runtime_endpoint_url": sim_url, "image_uri": TGI_IMAGE, "instance_type": INSTANCE,
                         "role_arn": ROLE, "payload": "tgi", "keep_endpoint": True},
        }],
    }, source="kept-s3", base_dir=tmp_path)
    run_benchmark(cfg, run_id="kept-s3-run")
    url = f"{s3_bucket}/results/kept-s3/kept-s3-run"
    kept = [r for r in list_fmbench_resources(sm_client(moto), "us-east-1") if r.kind == "endpoint"]
    assert [(r.run_id, r.run_url) for r in kept] == [("kept-s3-run", url)]
    assert load_manifest(url).endpoints["sm"].deleted_at is None

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)
    assert main(["cleanup", "--region", "us-east-1", "--yes"]) == 0
    assert sm_inventory(moto) == EMPTY
    assert load_manifest(url).endpoints["sm"].deleted_by == "fmbench cleanup"
    assert f"run kept-s3-run: report with the full cost of its endpoints: {url}/report.md" in capsys.readouterr().out
