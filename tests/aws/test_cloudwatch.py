"""CloudWatch endpoint metrics over a shard window, against moto's CloudWatch over real HTTP."""

from __future__ import annotations

import datetime as dt

import boto3
import pytest

from fmbench.deploy.cloudwatch import ENDPOINT_METRICS, collect_endpoint_metrics
from fmbench.errors import DeploymentError

DIMS = [{"Name": "EndpointName", "Value": "fmbench-ep"}, {"Name": "VariantName", "Value": "AllTraffic"}]


def _put(cw: object, namespace: str, name: str, values: list[float], at: list[dt.datetime], unit: str,
         dims: list[dict[str, str]] = DIMS) -> None:
    cw.put_metric_data(  # type: ignore[attr-defined]
        Namespace=namespace,
        MetricData=[{"MetricName": name, "Dimensions": dims, "Value": v, "Unit": unit, "Timestamp": t}
                    for v, t in zip(values, at, strict=True)],
    )


def test_window_metrics_aggregate_and_absent_ones_are_none(moto: str) -> None:
    cw = boto3.client("cloudwatch", endpoint_url=moto, region_name="us-east-1")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
    at = [start + dt.timedelta(seconds=30 + 60 * i) for i in range(3)]
    _put(cw, "AWS/SageMaker", "Invocations", [10, 12, 8], at, "Count")
    _put(cw, "AWS/SageMaker", "ModelLatency", [100_000, 200_000, 300_000], at, "Microseconds")
    _put(cw, "AWS/SageMaker", "Invocation4XXErrors", [0, 0, 0], at, "Count")
    _put(cw, "/aws/sagemaker/Endpoints", "GPUUtilization", [50, 90, 70], at, "Percent")
    # outside the window, or another endpoint: must not count
    _put(cw, "AWS/SageMaker", "Invocations", [1000], [start - dt.timedelta(minutes=30)], "Count")
    other = [{"Name": "EndpointName", "Value": "other"}, {"Name": "VariantName", "Value": "AllTraffic"}]
    _put(cw, "AWS/SageMaker", "Invocations", [500], [at[0]], "Count", dims=other)

    rows = collect_endpoint_metrics("fmbench-ep", "AllTraffic", start, start + dt.timedelta(minutes=3),
                                    "us-east-1", endpoint_url=moto)
    by = {r["metric"]: r for r in rows}
    assert [r["metric"] for r in rows] == [m for _, m, _ in ENDPOINT_METRICS]
    assert by["Invocations"]["sum"] == 30 and by["Invocations"]["datapoints"] == 3
    assert by["ModelLatency"]["average"] == pytest.approx(200_000) and by["ModelLatency"]["maximum"] == 300_000
    assert by["ModelLatency"]["unit"] == "Microseconds" and by["ModelLatency"]["minimum"] == 100_000
    assert by["Invocation4XXErrors"]["sum"] == 0  # a published zero stays zero
    assert by["GPUUtilization"]["maximum"] == 90 and by["GPUUtilization"]["average"] == pytest.approx(70)
    for absent in ("OverheadLatency", "Invocation5XXErrors", "CPUUtilization", "MemoryUtilization"):
        row = by[absent]
        assert row["sum"] is None and row["average"] is None and row["maximum"] is None
        assert row["datapoints"] == 0
    assert by["Invocations"]["start"] == start.replace(second=0).isoformat()
    assert by["Invocations"]["endpoint_name"] == "fmbench-ep" and by["Invocations"]["variant"] == "AllTraffic"


def test_naive_times_are_utc_and_window_is_widened_to_minutes(moto: str) -> None:
    start = dt.datetime(2026, 11, 28, 12, 0, 40)
    rows = collect_endpoint_metrics("fmbench-ep", "AllTraffic", start, start + dt.timedelta(seconds=50),
                                    "us-east-1", endpoint_url=moto)
    assert rows[0]["start"] == "2026-11-28T12:00:00+00:00" and rows[0]["end"] == "2026-11-28T12:02:00+00:00"


def test_inverted_window_is_refused() -> None:
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(DeploymentError, match="before it starts"):
        collect_endpoint_metrics("ep", "AllTraffic", now, now - dt.timedelta(minutes=1), "us-east-1")


def test_missing_credentials(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(DeploymentError, match="no AWS credentials"):
        collect_endpoint_metrics("ep", "AllTraffic", now - dt.timedelta(minutes=2), now, "us-east-1",
                                 endpoint_url=moto)
