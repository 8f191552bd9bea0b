"""What the benchmark cost is the bill: instance-hours from create to delete times the price, split
into deploying, measuring and idle; the report shows it with the endpoint timeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fmbench.deploy import EndpointTimeline
from fmbench.metrics import benchmark_cost
from fmbench.pricing import instance_price
from fmbench.records import records_frame
from tests.support.records import make_cfg, rec


def _timeline(**kw: Any) -> dict[str, Any]:
    base = {"experiment": "exp", "provider": "sagemaker", "endpoint_name": "fmbench-e-1", "region": "us-east-1",
            "instance_type": "ml.g5.2xlarge", "instance_count": 2,
            "created_at": "2026-03-01T10:00:00+00:00", "in_service_at": "2026-03-01T10:09:00+00:00",
            "first_shard_at": "2026-03-01T10:12:00+00:00", "last_shard_at": "2026-03-01T11:12:00+00:00",
            "deleted_at": "2026-03-01T11:30:00+00:00"}
    return {**base, **kw}


def test_cost_is_instance_hours_from_create_to_delete_times_the_price() -> None:
    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(4)]
    shards = [{"shard_id": "s1", "duration_s": 3600.0}]
    cfg = make_cfg({"hourly_usd": 1.5, "instance_count": 2})  # $1.50 per instance-hour
    cost = benchmark_cost(records_frame(records), cfg, shards, {"exp": _timeline()})
    row = cost.row(0, named=True)
    # 10:00 -> 11:30 = 1.5 h on 2 instances = 3 instance-hours; deploying 9 min, measuring 60 min, idle 21 min
    assert row["instance_hours"] == pytest.approx(3.0)
    assert row["cost_usd"] == pytest.approx(3.0 * 1.5)
    assert row["deploying_hours"] == pytest.approx(2 * 9 / 60)
    assert row["measuring_hours"] == pytest.approx(2 * 60 / 60)
    assert row["idle_hours"] == pytest.approx(2 * 21 / 60)
    assert row["deploying_cost_usd"] + row["measuring_cost_usd"] + row["idle_cost_usd"] == pytest.approx(4.5)
    assert row["still_billing"] is False and row["billed_from"].startswith("2026-03-01T10:00:00")
    assert "from create to delete" in row["basis"] and "shard time only" not in row["basis"]
    from fmbench.metrics.cost import billed_time

    billed = billed_time(EndpointTimeline.model_validate(_timeline()))
    assert billed is not None and billed.measuring_from is not None  # where the timeline plot draws the phases
    assert billed.measuring_from.isoformat() == "2026-03-01T10:12:00+00:00"
    assert billed.in_service is not None and billed.in_service.isoformat() == "2026-03-01T10:09:00+00:00"

    # The deployed instance count is what is billed, even when the config priced another count.
    one = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 1.5}), shards,
                         {"exp": EndpointTimeline.model_validate(_timeline())})
    assert one.row(0, named=True)["cost_usd"] == pytest.approx(4.5)

    # Priced from the table by the experiment's instance type: the table's price per instance.
    table = benchmark_cost(records_frame(records), make_cfg({"instance_type": "ml.g5.2xlarge"}), shards,
                           {"exp": _timeline()})
    assert table.row(0, named=True)["cost_usd"] == pytest.approx(
        3.0 * instance_price("ml.g5.2xlarge", "us-east-1").hourly_usd)


def test_a_short_runs_basis_reproduces_its_cost() -> None:
    # 2 s on one instance at $1/h: 0.00056 instance-hours and $0.00056, not "0.001 instance-hours"
    # beside $0.00056 (nor phases of "0.000 h" that cost something).
    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(2)]
    short = _timeline(instance_count=1, created_at="2026-03-01T10:00:00+00:00",
                      in_service_at="2026-03-01T10:00:00.500000+00:00",
                      first_shard_at="2026-03-01T10:00:00.500000+00:00",
                      last_shard_at="2026-03-01T10:00:01.500000+00:00", deleted_at="2026-03-01T10:00:02+00:00")
    row = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 1.0}), [{"shard_id": "s1", "duration_s": 1.0}],
                         {"exp": short}).row(0, named=True)
    assert row["cost_usd"] == pytest.approx(2 / 3600)
    assert "billed 0.00056 h from create to delete = 0.00056 instance-hours x $1/h" in row["basis"], row["basis"]
    assert "(deploying 0.00014, measuring 0.00028, idle 0.00014 instance-hours)" in row["basis"], row["basis"]
    from fmbench.metrics.cost import hours

    assert [hours(h) for h in (0.0, 0.0005, 0.0123, 1234.5)] == ["0.000", "0.00050", "0.012", "1,234.500"]


def test_an_endpoint_never_deleted_bills_to_the_run_end_and_says_so() -> None:
    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(4)]
    alive = _timeline(deleted_at=None, delete_error="AccessDenied", instance_count=1)
    cost = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 2.0}), None, {"exp": alive},
                          run_end="2026-03-01T12:00:00+00:00")
    row = cost.row(0, named=True)
    assert row["instance_hours"] == pytest.approx(2.0) and row["cost_usd"] == pytest.approx(4.0)
    assert row["still_billing"] is True
    assert "NOT deleted" in row["basis"] and "AccessDenied" in row["basis"]


def test_without_a_timeline_the_cost_is_shard_time_and_the_basis_says_so() -> None:
    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(4)]
    cost = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 2.0}), [{"shard_id": "s1",
                                                                                  "duration_s": 1800.0}])
    row = cost.row(0, named=True)
    assert row["cost_usd"] == pytest.approx(1.0) and row["deploying_hours"] is None
    assert "measured shard time only" in row["basis"] and "no endpoint timeline" in row["basis"]
    # a timeline without a create time: an endpoint the run did not create
    existing = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 2.0}),
                              [{"shard_id": "s1", "duration_s": 1800.0}],
                              {"exp": _timeline(created_at=None, in_service_at=None)})
    assert "the run did not create this endpoint" in existing.row(0, named=True)["basis"]


def test_report_shows_the_bill_split_and_the_endpoint_timeline(tmp_path: Path, no_png: None) -> None:
    from fmbench.report import render_report
    from tests.support.synth_runs import SimExperiment, write_run

    run = tmp_path / "run"
    write_run(str(run), experiments=[SimExperiment("a", pricing={"hourly_usd": 10.0}),
                                     SimExperiment("b", pricing={"hourly_usd": 4.0})],
              levels=[1], buckets=[[1, 500]], failed_shard=False, invalid_shard=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["endpoints"] = {
        "a": _timeline(experiment="a", endpoint_name="fmbench-a-1", instance_count=1),  # 1.5 h x $10
        "b": _timeline(experiment="b", endpoint_name="fmbench-b-1", instance_count=1, adopted=True,
                       created_at="2026-03-01T11:00:00+00:00", in_service_at="2026-03-01T11:06:00+00:00",
                       first_shard_at="2026-03-01T11:12:00+00:00", last_shard_at="2026-03-01T11:42:00+00:00",
                       deleted_at="2026-03-01T12:00:00+00:00"),  # 1 h x $4
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    render_report(str(run))
    md = (run / "report.md").read_text()
    assert "**Total: $19.00**" in md
    assert "#### Endpoint timeline" in md and "fmbench-a-1" in md and "(adopted)" in md
    assert "0.150 h ($1.50)" in md  # a's deploying: 9 min on 1 instance at $10/h
    html = (run / "report.html").read_text()
    assert "Endpoint timeline" in html and "fig-endpoint_timeline" in html


def test_an_earlier_attempts_deleted_endpoint_is_billed_with_the_resumed_runs() -> None:
    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(4)]
    earlier = _timeline(created_at="2026-03-01T09:00:00+00:00", in_service_at="2026-03-01T09:06:00+00:00",
                        first_shard_at="2026-03-01T09:12:00+00:00", last_shard_at="2026-03-01T09:24:00+00:00",
                        deleted_at="2026-03-01T09:30:00+00:00", deleted_by="fmbench cleanup")
    timeline = EndpointTimeline.model_validate(_timeline(earlier=[earlier]))
    row = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 1.5, "instance_count": 2}), None,
                         {"exp": timeline}).row(0, named=True)
    # this attempt's 1.5 h and the earlier one's 0.5 h, on 2 instances each, at $1.50 per instance-hour
    assert row["instance_hours"] == pytest.approx(4.0) and row["cost_usd"] == pytest.approx(6.0)
    assert row["deploying_hours"] == pytest.approx(2 * (9 + 6) / 60)
    assert row["measuring_hours"] == pytest.approx(2 * (60 + 12) / 60)
    assert row["idle_hours"] == pytest.approx(2 * (21 + 12) / 60)
    assert row["billed_from"].startswith("2026-03-01T09:00:00") and row["still_billing"] is False
    assert ("plus an earlier attempt's endpoint, 2 x ml.g5.2xlarge billed 0.500 h from 2026-03-01T09:00:00+00:00 "
            "to 2026-03-01T09:30:00+00:00, its deletion by fmbench cleanup ($1.50)") in row["basis"]

    from fmbench.report.figures import endpoint_timeline_figure
    from fmbench.report.tables import timeline_rows

    rows = timeline_rows({"exp": timeline}, None)
    assert [(r["Experiment"], r["Deleted"]) for r in rows] == [
        ("exp (earlier attempt)", "2026-03-01 09:30:00 (by fmbench cleanup)"), ("exp", "2026-03-01 11:30:00")]
    figure = endpoint_timeline_figure({"exp": timeline}, None, {})
    assert figure is not None
    bars = figure.figure["data"]
    assert {b["y"][0] for b in bars} == {"exp"}  # both endpoints on the experiment's row
    assert sorted(b["base"][0] for b in bars if b["name"] == "deploying") == [
        "2026-03-01T09:00:00+00:00", "2026-03-01T10:00:00+00:00"]


def test_an_earlier_attempts_endpoint_deleted_outside_fmbench_is_billed_to_when_it_was_known_alive() -> None:
    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(4)]
    # Known alive until its last shard at 09:24; found gone when the run resumed at 09:54.
    gone = _timeline(created_at="2026-03-01T09:00:00+00:00", in_service_at="2026-03-01T09:06:00+00:00",
                     first_shard_at="2026-03-01T09:12:00+00:00", last_shard_at="2026-03-01T09:24:00+00:00",
                     deleted_at="2026-03-01T09:24:00+00:00", gone_by="2026-03-01T09:54:00+00:00",
                     deleted_by="outside fmbench")
    # An attempt killed while deploying (never InService): nothing known to bill, up to 10 min possible.
    unborn = _timeline(created_at="2026-03-01T09:55:00+00:00", in_service_at=None, first_shard_at=None,
                       last_shard_at=None, deleted_at="2026-03-01T09:55:00+00:00",
                       gone_by="2026-03-01T10:05:00+00:00", deleted_by="outside fmbench")
    timeline = EndpointTimeline.model_validate(_timeline(earlier=[gone, unborn]))
    row = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 1.5, "instance_count": 2}), None,
                         {"exp": timeline}).row(0, named=True)
    # this attempt's 1.5 h and the first earlier one's known 0.4 h, on 2 instances each, at $1.50 an instance-hour
    assert row["instance_hours"] == pytest.approx(2 * 1.9) and row["cost_usd"] == pytest.approx(2 * 1.9 * 1.5)
    assert row["deploying_hours"] == pytest.approx(2 * (9 + 6) / 60)
    assert row["measuring_hours"] == pytest.approx(2 * (60 + 12) / 60)
    assert row["idle_hours"] == pytest.approx(2 * (21 + 6) / 60)
    assert row["billed_from"].startswith("2026-03-01T09:00:00")
    assert ("plus an earlier attempt's endpoint, 2 x ml.g5.2xlarge, gone when the run resumed at "
            "2026-03-01T09:54:00+00:00 (deleted outside fmbench at an unknown time): billed 0.400 h from "
            "2026-03-01T09:00:00+00:00 to 2026-03-01T09:24:00+00:00, the last time it was known alive ($1.20); "
            "it may have cost up to 1.000 instance-hours ($1.50) more, not included") in row["basis"]
    assert ("gone when the run resumed at 2026-03-01T10:05:00+00:00 (deleted outside fmbench at an unknown time): "
            "billed nothing (it never reached InService before the attempt was killed, and may never have been "
            "created); it may have cost up to 0.333 instance-hours ($0.50) more, not included") in row["basis"]

    from fmbench.report.figures import endpoint_timeline_figure
    from fmbench.report.tables import timeline_rows

    rows = timeline_rows({"exp": timeline}, None)
    assert [(r["Experiment"], r["Deleted"], r["Billed"]) for r in rows] == [
        ("exp (earlier attempt)", "between 2026-03-01 09:24:00 and 2026-03-01 09:54:00 (outside fmbench)",
         "0.400 h or more"),
        ("exp (earlier attempt)", "between 2026-03-01 09:55:00 and 2026-03-01 10:05:00 (outside fmbench)",
         "0.000 h or more"),
        ("exp", "2026-03-01 11:30:00", "1.500 h")]
    figure = endpoint_timeline_figure({"exp": timeline}, None, {})
    assert figure is not None
    notes = sorted((a["x"], a["text"]) for a in figure.figure["layout"]["annotations"])
    assert notes == [("2026-03-01T09:24:00+00:00", "  deleted outside fmbench by 09:54:00 UTC"),
                     ("2026-03-01T09:55:00+00:00", "  deleted outside fmbench by 10:05:00 UTC")]


def test_a_simulated_endpoint_of_a_killed_attempt_is_billed_to_when_it_was_known_alive_not_for_ever() -> None:
    """A simulated server is a child of the run's process and ends with it. A killed attempt's, never
    recorded deleted, was dropped from the bill when the resumed run deployed again, and billed up to
    now (for ever) when it did not (its shards were all measured)."""
    from fmbench.report.figures import endpoint_timeline_figure
    from fmbench.report.tables import timeline_rows
    from fmbench.sequence import _ended_with_attempt

    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(4)]
    killed = EndpointTimeline.model_validate(_timeline(provider="simulated", endpoint_name=None, deleted_at=None))
    closed = _ended_with_attempt(killed, "2026-03-01T11:42:00+00:00")
    assert closed.deleted_at == killed.last_shard_at and closed.gone_by == "2026-03-01T11:42:00+00:00"
    assert _ended_with_attempt(closed, "2026-03-01T12:00:00+00:00") == closed  # once
    row = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 1.5, "instance_count": 2}), None,
                         {"exp": closed}).row(0, named=True)
    assert row["still_billing"] is False and row["instance_hours"] == pytest.approx(2 * 72 / 60)
    assert ("; ended with the killed attempt's process at an unknown time between 2026-03-01T11:12:00+00:00, "
            "the last time it was known alive, and 2026-03-01T11:42:00+00:00, when the run resumed: it may "
            "have cost up to 1.000 instance-hours ($1.50) more, not included") in row["basis"]
    assert [(r["Deleted"], r["Billed"]) for r in timeline_rows({"exp": closed}, None)] == [
        ("between 2026-03-01 11:12:00 and 2026-03-01 11:42:00 (the end of the killed attempt's process)",
         "1.200 h or more")]
    figure = endpoint_timeline_figure({"exp": closed}, None, {})
    assert figure is not None
    assert [a["text"] for a in figure.figure["layout"]["annotations"]] == [
        "  ended with the killed attempt's process by 11:42:00 UTC"]


def test_an_earlier_attempts_endpoint_a_failed_resume_could_not_adopt_is_billed_as_still_running() -> None:
    records = [rec(i, float(i), 1.0, shard_id="s1") for i in range(4)]
    left = _timeline(created_at="2026-03-01T09:00:00+00:00", in_service_at="2026-03-01T09:06:00+00:00",
                     first_shard_at="2026-03-01T09:12:00+00:00", last_shard_at="2026-03-01T09:24:00+00:00",
                     deleted_at=None, delete_error="not adopted: it may still be running")
    timeline = EndpointTimeline.model_validate(_timeline(earlier=[left]))
    row = benchmark_cost(records_frame(records), make_cfg({"hourly_usd": 1.5, "instance_count": 2}), None,
                         {"exp": timeline}, run_end="2026-03-01T12:00:00+00:00").row(0, named=True)
    # this attempt's 1.5 h, and the endpoint left running for 3 h up to the run's end, on 2 instances each
    assert row["instance_hours"] == pytest.approx(2 * 4.5) and row["cost_usd"] == pytest.approx(2 * 4.5 * 1.5)
    assert row["still_billing"] is True and row["billed_to"].startswith("2026-03-01T12:00:00")
    assert ("plus an earlier attempt's endpoint, 2 x ml.g5.2xlarge billed 3.000 h from 2026-03-01T09:00:00+00:00 "
            "($9.00), NOT deleted: still billing, counted up to 2026-03-01T12:00:00+00:00 (not adopted: it may "
            "still be running)") in row["basis"]

    from fmbench.report.tables import timeline_rows

    rows = timeline_rows({"exp": timeline}, "2026-03-01T12:00:00+00:00")
    assert [(r["Experiment"], r["Deleted"], r["Billed"]) for r in rows] == [
        ("exp (earlier attempt)", "NOT deleted (still billing)", "3.000 h"), ("exp", "2026-03-01 11:30:00", "1.500 h")]


def test_a_last_attempt_that_never_created_its_endpoint_bills_only_what_earlier_attempts_did() -> None:
    from fmbench.report.tables import timeline_rows

    cfg = make_cfg({"hourly_usd": 1.5, "instance_count": 2})
    never = {"created_at": None, "in_service_at": None, "first_shard_at": None, "last_shard_at": None,
             "deleted_at": None, "never_created": True}
    earlier = _timeline(created_at="2026-03-01T09:00:00+00:00", in_service_at="2026-03-01T09:06:00+00:00",
                        first_shard_at="2026-03-01T09:12:00+00:00", last_shard_at="2026-03-01T09:24:00+00:00",
                        deleted_at="2026-03-01T09:30:00+00:00", deleted_by="fmbench cleanup")
    empty = records_frame([])
    run_end = "2026-03-01T12:00:00+00:00"

    # nothing before it: nothing billed, and the basis says why
    alone = EndpointTimeline.model_validate(_timeline(**never))
    row = benchmark_cost(empty, cfg, None, {"exp": alone}, run_end=run_end).row(0, named=True)
    assert (row["instance_hours"], row["cost_usd"]) == (0.0, 0.0)
    assert row["basis"] == "no endpoint billed: its deploy ended before CreateEndpoint and left nothing"
    [r] = timeline_rows({"exp": alone}, run_end)
    assert r["Deleted"] == "never created: its deploy ended before CreateEndpoint"

    # an earlier attempt's endpoint: its 0.5 h on 2 instances is the whole bill
    resumed = EndpointTimeline.model_validate(_timeline(**never, earlier=[earlier]))
    row = benchmark_cost(empty, cfg, None, {"exp": resumed}, run_end=run_end).row(0, named=True)
    assert row["instance_hours"] == pytest.approx(2 * 0.5) and row["cost_usd"] == pytest.approx(2 * 0.5 * 1.5)
    assert row["still_billing"] is False and row["billed_to"].startswith("2026-03-01T09:30:00")
    assert row["basis"].startswith("an earlier attempt's endpoint: 2 x ml.g5.2xlarge billed 0.500 h")
    assert "the last attempt's deploy created no endpoint" in row["basis"]
    assert "deleted by fmbench cleanup" in row["basis"]

    # a timeline without a creation that is not marked never created (an endpoint the run did not create)
    # is billed by its measured shard time, not said to have created nothing
    unmarked = EndpointTimeline.model_validate(_timeline(**{**never, "never_created": False}))
    row = benchmark_cost(empty, cfg, None, {"exp": unmarked}, run_end=run_end).row(0, named=True)
    assert "no endpoint billed" not in row["basis"] and "measured shard time only" in row["basis"]


def test_a_simulated_endpoint_priced_for_several_instances_is_billed_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's bill of an endpoint it starts counts the instances its price is for: the timeline the
    run records when the deploy starts has the count the shards' cost per hour was worked out with."""
    import concurrent.futures

    import yaml

    from fmbench import sequence
    from fmbench.config import load_config_text
    from fmbench.pricing import resolve_pricing
    from fmbench.rundir import load_manifest, open_run

    cfg = load_config_text(yaml.safe_dump({
        "name": "priced", "output": str(tmp_path / "results"), "buckets": [[1, 200]],
        "datasets": [{"name": "s", "source": "synthetic", "prompts_per_bucket": 1}],
        "experiments": [{"name": "e", "endpoint": {"provider": "simulated"}, "concurrency_levels": [1],
                         "pricing": {"hourly_usd": 1.5, "instance_count": 2}}]}), source="priced.yml")
    run = open_run(cfg, run_id="priced")
    deploying: concurrent.futures.Future[Any] = concurrent.futures.Future()

    class Deploys:
        def deploy(self, cfg: Any, experiment: str, run: Any) -> concurrent.futures.Future[Any]:
            return deploying

    lifecycles = sequence.Lifecycles(Deploys(), cfg, run, {"e": []}, [])  # type: ignore[arg-type]
    lifecycles._start_deploy("e")
    timeline = load_manifest(run.url).endpoints["e"]
    assert timeline.instance_count == resolve_pricing(cfg.experiments[0]).instance_count == 2
    deploying.set_exception(RuntimeError("not needed"))
    monkeypatch.setattr(sequence, "STOP_DEPLOY_WAIT_S", 0.2)
    lifecycles.stop_all()
    # billed for an hour: 2 instance-hours at $1.50, the shards' $3.00 per hour
    life = timeline.model_copy(update={"created_at": "2026-03-01T10:00:00+00:00",
                                       "deleted_at": "2026-03-01T11:00:00+00:00"})
    row = benchmark_cost(records_frame([rec(0, 0.0, 1.0, experiment="e")]), cfg, None, {"e": life}).row(0, named=True)
    assert row["instance_hours"] == pytest.approx(2.0) and row["cost_usd"] == pytest.approx(3.0)
