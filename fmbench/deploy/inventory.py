"""What fmbench left running in an AWS region: SageMaker endpoints, endpoint configs and models
that carry fmbench's tags, with their instances, age and hourly price, and their deletion.

A resource without the ``fmbench:run-id`` tag was not created by fmbench and is never listed, so
never deleted. `fmbench cleanup` and the warning before a run deploys both read this module.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from dataclasses import dataclass
from typing import Any

from fmbench.deploy.heartbeat import TAG_HOST, live_until, this_host
from fmbench.deploy.sagemaker import (
    TAG_CONFIG,
    TAG_EXPERIMENT,
    TAG_RUN_ID,
    TAG_RUN_URL,
    _describe,
    _not_found,
    delete_created,
    resource_tags,
)
from fmbench.errors import ConfigError, CredentialsError, DeploymentError

log = logging.getLogger(__name__)

#: Resource kinds in the order they are listed and deleted (an endpoint before its config and model).
KINDS = ("endpoint", "endpoint-config", "model")

_LISTS = {
    "endpoint": ("list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
    "endpoint-config": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", "EndpointConfigArn"),
    "model": ("list_models", "Models", "ModelName", "ModelArn"),
}


@dataclass(frozen=True)
class FmbenchResource:
    """One SageMaker resource that fmbench created and that still exists."""

    kind: str
    name: str
    region: str
    run_id: str
    config_name: str | None
    experiment: str | None
    created_at: _dt.datetime | None
    status: str | None = None
    instance_type: str | None = None
    instance_count: int | None = None
    hourly_usd: float | None = None  # all instances; only endpoints bill by the hour
    host: str | None = None  # the host of the run that made or last adopted it (`fmbench.deploy.heartbeat`)
    live_until: _dt.datetime | None = None  # until when that run said it is in progress
    run_url: str | None = None  # where that run is stored, when it is S3 (`fmbench.deploy.sagemaker.TAG_RUN_URL`)

    def age_s(self, now: _dt.datetime | None = None) -> float | None:
        """Seconds since it was created."""
        if self.created_at is None:
            return None
        return ((now or _dt.datetime.now(_dt.UTC)) - self.created_at).total_seconds()

    @property
    def ref(self) -> str:
        """``kind:name``, as a deploy's ``created`` list names it."""
        return f"{self.kind}:{self.name}"


def parse_age(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``3d`` (or a bare number of hours) as seconds.

    Raises:
        ConfigError: anything else.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise ConfigError(f"--older-than {text!r}: give a number with s, m, h or d, e.g. 2h or 3d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}[m.group(2)]


def sagemaker_client(region: str | None, profile: str | None = None, endpoint_url: str | None = None,
                     quick: bool = False) -> tuple[Any, str]:
    """A SageMaker control-plane client and its region; ``quick``: one attempt, short timeouts.

    Raises:
        CredentialsError: unknown profile. DeploymentError: no region.
    """
    import botocore.config
    import botocore.exceptions

    from fmbench.aws import make_session, profile_not_found

    try:
        session = make_session(region, profile)
    except botocore.exceptions.ProfileNotFound as exc:
        raise CredentialsError(profile_not_found(profile)) from exc
    region = region or session.region_name
    if not region:
        raise DeploymentError("no AWS region: give --region, set endpoint.region in the config, "
                              "or set AWS_REGION / AWS_DEFAULT_REGION")
    config = botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=20) \
        if quick else None
    return session.client("sagemaker", region_name=region, endpoint_url=endpoint_url, config=config), region


def _utc(when: Any) -> _dt.datetime | None:
    if not isinstance(when, _dt.datetime):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


def _pages(client: Any, kind: str) -> list[dict[str, Any]]:
    method, key, _, _ = _LISTS[kind]
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"MaxResults": 100}
    while True:
        page = getattr(client, method)(**kwargs)
        items.extend(page.get(key, []))
        if not page.get("NextToken"):
            return items
        kwargs["NextToken"] = page["NextToken"]


def _instances(client: Any, endpoint: str) -> tuple[str | None, str | None, int | None]:
    """Status, instance type and count of an endpoint (type from its endpoint config)."""
    try:
        desc = client.describe_endpoint(EndpointName=endpoint)
    except Exception as exc:
        if _not_found(exc):  # deleted since it was listed
            return None, None, None
        raise
    variants = desc.get("ProductionVariants") or []
    count = variants[0].get("CurrentInstanceCount") if variants else None
    itype = None
    try:
        config = client.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
        first = (config.get("ProductionVariants") or [{}])[0]
        itype = first.get("InstanceType")
        count = count or first.get("InitialInstanceCount")
    except Exception as exc:  # the config may be gone while the endpoint still runs (and bills)
        if not _not_found(exc):
            raise
    return desc.get("EndpointStatus"), itype, int(count) if count else None


def _hourly(itype: str | None, count: int | None, region: str) -> float | None:
    if not itype:
        return None
    from fmbench.pricing import instance_price

    try:
        return instance_price(itype, region).hourly_usd * (count or 1)
    except ConfigError:  # an instance type the shipped table does not know: price unknown, not an error
        return None


def list_fmbench_resources(
    client: Any,
    region: str,
    *,
    kinds: tuple[str, ...] = KINDS,
    run_id: str | None = None,
    config_name: str | None = None,
    older_than_s: float | None = None,
    exclude_run_id: str | None = None,
    now: _dt.datetime | None = None,
) -> list[FmbenchResource]:
    """The SageMaker resources of ``kinds`` in the client's region that carry fmbench's tags.

    Filters: the run id, the config name (resources created before fmbench tagged the config name
    never match it), a minimum age, and one run id to leave out (the run about to start).

    Raises:
        DeploymentError: a SageMaker call failed (refused credentials, unreachable API, ...).
    """
    found: list[FmbenchResource] = []
    now = now or _dt.datetime.now(_dt.UTC)
    for kind in kinds:
        _, _, name_key, arn_key = _LISTS[kind]
        try:
            items = _pages(client, kind)
        except Exception as exc:
            raise _explain(f"listing SageMaker {kind}s in {region}", exc) from exc
        for item in items:
            name = item[name_key]
            try:
                tags = resource_tags(client, item[arn_key])
            except Exception as exc:
                if _not_found(exc):
                    continue
                raise _explain(f"reading the tags of {kind} {name}", exc) from exc
            rid = tags.get(TAG_RUN_ID)
            if rid is None or (run_id is not None and rid != run_id) or rid == exclude_run_id:
                continue
            if config_name is not None and tags.get(TAG_CONFIG) != config_name:
                continue
            created = _utc(item.get("CreationTime"))
            if older_than_s is not None and (created is None or (now - created).total_seconds() < older_than_s):
                continue
            status = itype = None
            count = None
            if kind == "endpoint":
                try:
                    status, itype, count = _instances(client, name)
                except Exception as exc:
                    raise _explain(f"describing endpoint {name}", exc) from exc
                status = status or item.get("EndpointStatus")
            found.append(FmbenchResource(
                kind=kind, name=name, region=region, run_id=rid, config_name=tags.get(TAG_CONFIG),
                experiment=tags.get(TAG_EXPERIMENT), created_at=created, status=status, instance_type=itype,
                instance_count=count, hourly_usd=_hourly(itype, count, region) if kind == "endpoint" else None,
                host=tags.get(TAG_HOST), live_until=live_until(tags), run_url=tags.get(TAG_RUN_URL),
            ))
    return found


def runs_in_progress(resources: list[FmbenchResource],
                     now: _dt.datetime | None = None) -> dict[tuple[str | None, str], str]:
    """The runs among ``resources``' that are in progress, as (config name, run id) -> who runs it.

    On this host a run's own lock decides (`fmbench.rundir.live_on_this_host`): held means in
    progress, free means ended, however recently its tags were renewed (a run killed here is
    cleaned up at once). A run of another host is in progress while the ``live-until`` tag it
    renews is ahead (`fmbench.deploy.heartbeat`); one killed there reads as ended once it lapses.
    Resources of fmbench versions before these tags read as ended.
    """
    from fmbench.rundir import live_on_this_host

    now = now or _dt.datetime.now(_dt.UTC)
    here = this_host()
    live: dict[tuple[str | None, str], str] = {}
    runs: dict[tuple[str | None, str], list[FmbenchResource]] = {}
    for r in resources:
        runs.setdefault((r.config_name, r.run_id), []).append(r)
    for (config, rid), items in runs.items():
        holder = live_on_this_host(config, rid) if config is not None else None
        if holder is not None:
            live[(config, rid)] = holder
            continue
        fresh = [r for r in items if r.live_until is not None and r.live_until > now
                 and not (r.host == here and config is not None)]  # (here, the free lock said it ended)
        if fresh:
            last = max(fresh, key=lambda r: r.live_until or now)
            live[(config, rid)] = f"on {last.host or 'another host'}, renewed until {last.live_until:%H:%M:%S} UTC"
    return live


def delete_resources(client: Any, resources: list[FmbenchResource]) -> tuple[list[str], list[str]]:
    """Delete the given resources, endpoints first; returns (removed, failures) as 'kind:name'.

    An endpoint already Deleting is left to finish (deleting it again would be refused).
    """
    going = [r.ref for r in resources if r.kind == "endpoint" and r.status == "Deleting"]
    removed, failures = delete_created(client, [r.ref for r in resources if r.ref not in going], quiet=True)
    return removed + going, failures


def hourly_total(resources: list[FmbenchResource]) -> tuple[float, int]:
    """What the listed endpoints cost per hour together, and how many endpoints have no known price."""
    endpoints = [r for r in resources if r.kind == "endpoint"]
    return sum(r.hourly_usd or 0.0 for r in endpoints), sum(1 for r in endpoints if r.hourly_usd is None)


def _explain(call: str, exc: Exception) -> DeploymentError:
    """One line naming the cause, with what to do about refused credentials."""
    if isinstance(exc, DeploymentError):
        return exc
    from fmbench.preflight import aws_hint

    error = _describe(call, exc)
    hint = aws_hint(str(error))
    return DeploymentError(f"{error}; {hint}" if hint else str(error))
