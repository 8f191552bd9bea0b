"""CloudWatch metrics of a SageMaker endpoint over a shard's time window.

SageMaker publishes invocation metrics (``AWS/SageMaker``) and instance utilization
(``/aws/sagemaker/Endpoints``) per endpoint and variant at one-minute resolution, a minute or
two after the fact: collect a window once it is a few minutes old. The window is wall-clock UTC
(the engine's monotonic stamps cannot be compared with CloudWatch's), widened to whole minutes.
A metric with no datapoints in the window is reported with ``None`` values, never zeros.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import botocore.exceptions

from fmbench.aws import make_session
from fmbench.errors import DeploymentError

log = logging.getLogger(__name__)

#: (namespace, metric name, unit as published) collected for each endpoint variant.
ENDPOINT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("AWS/SageMaker", "Invocations", "Count"),
    ("AWS/SageMaker", "InvocationsPerInstance", "Count"),
    ("AWS/SageMaker", "ModelLatency", "Microseconds"),
    ("AWS/SageMaker", "OverheadLatency", "Microseconds"),
    ("AWS/SageMaker", "Invocation4XXErrors", "Count"),
    ("AWS/SageMaker", "Invocation5XXErrors", "Count"),
    ("AWS/SageMaker", "InvocationModelErrors", "Count"),
    ("/aws/sagemaker/Endpoints", "CPUUtilization", "Percent"),
    ("/aws/sagemaker/Endpoints", "MemoryUtilization", "Percent"),
    ("/aws/sagemaker/Endpoints", "GPUUtilization", "Percent"),
    ("/aws/sagemaker/Endpoints", "GPUMemoryUtilization", "Percent"),
    ("/aws/sagemaker/Endpoints", "DiskUtilization", "Percent"),
)
_STATS = ("Sum", "SampleCount", "Maximum", "Minimum")


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _window(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise DeploymentError(f"CloudWatch window ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    lo = start.replace(second=0, microsecond=0)
    hi = end.replace(second=0, microsecond=0)
    if hi < end:
        hi += dt.timedelta(minutes=1)
    return lo, hi


def collect_endpoint_metrics(
    endpoint_name: str,
    variant: str,
    start: dt.datetime,
    end: dt.datetime,
    region: str | None = None,
    *,
    profile: str | None = None,
    endpoint_url: str | None = None,
    period_s: int = 60,
    metrics: tuple[tuple[str, str, str], ...] = ENDPOINT_METRICS,
) -> list[dict[str, Any]]:
    """Collect an endpoint variant's CloudWatch metrics over ``[start, end]`` (wall-clock UTC).

    Args:
        endpoint_name: the SageMaker endpoint.
        variant: its production variant (fmbench deploys ``AllTraffic``).
        start, end: the window; naive datetimes are taken as UTC. Widened to whole minutes.
        region, profile: AWS access (standard chain when None).
        endpoint_url: override of the CloudWatch API URL (a local test server).
        period_s: CloudWatch period (60 for standard-resolution metrics).
        metrics: which (namespace, metric, unit) to collect.

    Returns:
        One dict per metric: ``namespace, metric, unit, endpoint_name, variant, start, end``
        (ISO UTC) and ``datapoints, sum, average, maximum, minimum, sample_count`` aggregated over
        the window; the values are None when CloudWatch has no datapoint for the metric.

    Raises:
        DeploymentError: credentials missing or the CloudWatch API refused the query.
    """
    lo, hi = _window(start, end)
    dims = [{"Name": "EndpointName", "Value": endpoint_name}, {"Name": "VariantName", "Value": variant}]
    queries, index = [], {}
    for i, (namespace, name, _unit) in enumerate(metrics):
        for stat in _STATS:
            qid = f"m{i}{stat.lower()}"
            index[qid] = (i, stat)
            queries.append(
                {
                    "Id": qid,
                    "MetricStat": {
                        "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": dims},
                        "Period": period_s,
                        "Stat": stat,
                    },
                    "ReturnData": True,
                }
            )
    values: dict[tuple[int, str], list[float]] = {}
    try:
        client = make_session(region, profile).client("cloudwatch", region_name=region, endpoint_url=endpoint_url)
        for batch_start in range(0, len(queries), 500):
            kwargs: dict[str, Any] = {
                "MetricDataQueries": queries[batch_start : batch_start + 500],
                "StartTime": lo,
                "EndTime": hi,
            }
            while True:
                resp = client.get_metric_data(**kwargs)
                for result in resp.get("MetricDataResults", []):
                    values.setdefault(index[result["Id"]], []).extend(float(v) for v in result.get("Values", []))
                token = resp.get("NextToken")
                if not token:
                    break
                kwargs["NextToken"] = token
    except botocore.exceptions.NoCredentialsError as exc:
        raise DeploymentError("CloudWatch: no AWS credentials found in the standard chain") from exc
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise DeploymentError(f"CloudWatch GetMetricData: {err.get('Code')}: {err.get('Message')}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise DeploymentError(f"CloudWatch GetMetricData: {exc}") from exc

    rows = []
    for i, (namespace, name, unit) in enumerate(metrics):
        sums, counts = values.get((i, "Sum"), []), values.get((i, "SampleCount"), [])
        maxima, minima = values.get((i, "Maximum"), []), values.get((i, "Minimum"), [])
        total = sum(sums) if sums else None
        count = sum(counts) if counts else None
        rows.append(
            {
                "namespace": namespace,
                "metric": name,
                "unit": unit,
                "endpoint_name": endpoint_name,
                "variant": variant,
                "start": lo.isoformat(),
                "end": hi.isoformat(),
                "datapoints": len(sums),
                "sum": total,
                "sample_count": count,
                "average": total / count if total is not None and count else None,
                "maximum": max(maxima) if maxima else None,
                "minimum": min(minima) if minima else None,
            }
        )
    return rows


def collect_run_metrics(cfg: Any, shards: list[dict[str, Any]], *, sleep: Any = time.sleep) -> list[dict[str, Any]]:
    """CloudWatch metrics of every measured shard of SageMaker experiments with
    ``cloudwatch_metrics: true``, one row per shard and metric (values None when absent).

    Waits until each shard's window is ``cloudwatch_delay_s`` old (CloudWatch publishes late).
    The control-plane ``endpoint_url`` override, when set, is used for CloudWatch too.

    Args:
        cfg: the run's `BenchmarkConfig`.
        shards: the manifest's shard outcomes (``started_at``/``ended_at`` wall-clock ISO, ``endpoint_name``).
        sleep: how to wait (tests pass a no-op).
    """
    from fmbench.config import SageMakerEndpoint
    from fmbench.deploy.sagemaker import VARIANT_NAME

    experiments = {e.name: e for e in cfg.experiments}
    rows: list[dict[str, Any]] = []
    for shard in shards:
        experiment = experiments.get(shard.get("experiment", ""))
        endpoint = experiment.endpoint if experiment else None
        if not isinstance(endpoint, SageMakerEndpoint) or not endpoint.cloudwatch_metrics:
            continue
        if shard.get("status") != "ok" or not shard.get("endpoint_name") or not shard.get("started_at"):
            continue
        start = dt.datetime.fromisoformat(shard["started_at"])
        end = dt.datetime.fromisoformat(shard["ended_at"]) + dt.timedelta(seconds=1)
        wait = (end + dt.timedelta(seconds=endpoint.cloudwatch_delay_s) - dt.datetime.now(dt.UTC)).total_seconds()
        if wait > 0:
            log.info("CloudWatch: waiting %.0f s for the metrics of shard %s to be published", wait, shard["shard_id"])
            sleep(wait)
        for row in collect_endpoint_metrics(shard["endpoint_name"], VARIANT_NAME, start, end, endpoint.region,
                                            profile=endpoint.profile, endpoint_url=endpoint.endpoint_url):
            rows.append({"shard_id": shard["shard_id"], "experiment": shard["experiment"],
                         "dataset": shard.get("dataset"), "bucket": shard.get("bucket"),
                         "concurrency": shard.get("concurrency"), **row})
    return rows
