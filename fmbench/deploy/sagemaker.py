"""Deploy and tear down SageMaker real-time endpoints, and the (empty) Bedrock equivalent.

A SageMaker experiment names exactly one source: an existing endpoint (nothing is created or
deleted), a JumpStart model id (image, artifacts and environment resolved from JumpStart's
metadata by the SageMaker SDK, ``sagemaker.core``) or a container image. Deploying creates a
model, an endpoint config and an endpoint, all named ``fmbench-<experiment>-<run>``, waits for
``InService`` and returns a `DeployedEndpoint` whose ``created`` list drives the teardown, which
removes exactly those resources and nothing else. Every resource is tagged with the run id,
experiment and config name; a resumed run adopts the endpoint its interrupted attempt left.

Importing this module registers the ``sagemaker`` and ``bedrock`` providers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.exceptions

from fmbench import interrupts, progress
from fmbench.aws import make_session, profile_not_found, redact_aws
from fmbench.config import BedrockEndpoint, ExperimentConfig, SageMakerEndpoint
from fmbench.deploy import DeployedEndpoint, deploy_state, note_deploy_state, register_provider
from fmbench.deploy.heartbeat import HEARTBEATS, live_tags
from fmbench.errors import ConfigError, DeploymentError
from fmbench.names import slug
from fmbench.settings import variable_values

log = logging.getLogger(__name__)

#: Name of the single production variant of endpoints fmbench creates.
VARIANT_NAME = "AllTraffic"
_NAME_MAX = 63
_KINDS_IN_TEARDOWN_ORDER = ("endpoint", "endpoint-config", "model")
#: Tags on every resource fmbench creates (the run id, the experiment, the config's name).
TAG_RUN_ID = "fmbench:run-id"
TAG_EXPERIMENT = "fmbench:experiment"
TAG_CONFIG = "fmbench:config-name"
#: Where the run is stored, when that is an S3 URL: `fmbench cleanup` on any host records a deletion
#: there. Not an identity tag: a resumed run adopts its endpoint whatever it says, and re-tags it.
TAG_RUN_URL = "fmbench:run-url"


@dataclass
class ContainerSpec:
    """What a SageMaker model runs: image, artifacts, environment and deployment settings."""

    image_uri: str
    model_data: str | dict[str, Any] | None = None  # s3:// tarball URI or a ModelDataSource dict
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: int | None = None
    download_timeout_s: int | None = None
    network_isolation: bool = False
    source: str = "image"  # "image" or "jumpstart:<model id>@<version>"
    instance_type: str | None = None  # as configured, or JumpStart's default for the model


# ---------------------------------------------------------------- names and sessions


def resource_name(experiment: str, run_id: str) -> str:
    """The name of the model, endpoint config and endpoint a run creates for an experiment.

    ``fmbench-<experiment>-<8 hex digits of the run id>``, at most 63 characters of
    ``[A-Za-z0-9-]``, unique per (run, experiment).
    """
    tag = hashlib.sha256(f"{run_id}/{experiment}".encode()).hexdigest()[:8]
    stem = slug(experiment, lower=False) or "exp"
    stem = stem[: _NAME_MAX - len("fmbench--") - len(tag)].strip("-")
    return f"fmbench-{stem}-{tag}"


def _session(cfg: SageMakerEndpoint | BedrockEndpoint) -> tuple[boto3.Session, str]:
    try:
        session = make_session(cfg.region, cfg.profile)
    except botocore.exceptions.ProfileNotFound as exc:
        raise DeploymentError(profile_not_found(cfg.profile)) from exc
    region = cfg.region or session.region_name
    if not region:
        raise DeploymentError("no AWS region: set endpoint.region or AWS_REGION / AWS_DEFAULT_REGION")
    return session, region


def _sagemaker_client(cfg: SageMakerEndpoint) -> tuple[Any, str]:
    session, region = _session(cfg)
    client = session.client("sagemaker", region_name=region, endpoint_url=cfg.endpoint_url)
    return client, region


def _describe(call: str, exc: Exception) -> DeploymentError:
    """The one translation of botocore errors into a `DeploymentError` (secrets never included: nor
    the signing material AWS may quote, `fmbench.aws.redact_aws`)."""
    if isinstance(exc, DeploymentError):
        return exc
    error = _described(call, exc)
    error.args = (redact_aws(str(error)),)
    if (cleared := redact_aws(str(exc))) != str(exc):  # it is chained to the new error, whose traceback prints it
        exc.args = (cleared,)
    return error


def _described(call: str, exc: Exception) -> DeploymentError:
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return DeploymentError(
            f"{call}: no AWS credentials found (standard chain: environment, profile, SSO, instance role); "
            "configure credentials or set endpoint.profile"
        )
    if isinstance(exc, botocore.exceptions.PartialCredentialsError):
        return DeploymentError(f"{call}: incomplete AWS credentials ({exc.kwargs.get('cred_var', 'a key')} missing)")
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return DeploymentError(f"{call}: {err.get('Code', 'Error')}: {err.get('Message', exc)}")
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return DeploymentError(f"{call}: cannot reach {exc.kwargs.get('endpoint_url', 'the AWS API')}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return DeploymentError(f"{call}: {exc}")
    return DeploymentError(f"{call}: {exc.__class__.__name__}: {exc}")


def _not_found(exc: Exception) -> bool:
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    err = exc.response.get("Error", {})
    return err.get("Code") in ("ValidationException", "ResourceNotFound") and "could not find" in str(
        err.get("Message", "")
    ).lower()


# ---------------------------------------------------------------- container specs


def _lmi_env(serving_properties: dict[str, str]) -> dict[str, str]:
    """LMI ``serving.properties`` entries as the OPTION_* environment variables LMI reads."""
    env = {}
    for key, value in serving_properties.items():
        name = key.removeprefix("option.")
        env["OPTION_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()] = str(value)
    return env


def _model_data_source(uri: str, accept_eula: bool) -> str | dict[str, Any]:
    """A tarball URI as is; an S3 prefix (ending in /) as an uncompressed ModelDataSource."""
    if not uri.endswith("/"):
        return uri
    source: dict[str, Any] = {"S3Uri": uri, "S3DataType": "S3Prefix", "CompressionType": "None"}
    if accept_eula:
        source["ModelAccessConfig"] = {"AcceptEula": True}
    return {"S3DataSource": source}


def secret_env(cfg: SageMakerEndpoint, where: str) -> dict[str, str]:
    """The container's secret variables (``env_from``), read from this process's environment.

    Raises:
        ConfigError: a variable it names is not set or empty.
    """
    return variable_values(cfg.env_from, lambda name, variable: ConfigError(
        f"{where}.env_from.{name}: environment variable {variable} is not set or empty"))


def image_container(cfg: SageMakerEndpoint) -> ContainerSpec:
    """The container of an image deploy: image, model data, HF_MODEL_ID and LMI OPTION_* variables."""
    if not cfg.image_uri:
        raise DeploymentError("image deploy without image_uri")
    env: dict[str, str] = {}
    if cfg.hf_model_id:
        env["HF_MODEL_ID"] = cfg.hf_model_id
    env.update(_lmi_env(cfg.serving_properties or {}))
    env.update(cfg.env)
    data = _model_data_source(cfg.model_data, cfg.accept_eula) if cfg.model_data else None
    return ContainerSpec(
        image_uri=cfg.image_uri,
        model_data=data,
        env=env,
        startup_timeout_s=cfg.container_startup_timeout_s,
        instance_type=cfg.instance_type,
    )


def jumpstart_container(cfg: SageMakerEndpoint, session: boto3.Session, region: str) -> ContainerSpec:
    """Resolve a JumpStart model id to its container with the SageMaker SDK (``sagemaker.core``).

    The SDK reads JumpStart's manifest and specs from the regional JumpStart bucket, or from the
    bucket in ``AWS_JUMPSTART_CONTENT_BUCKET_OVERRIDE`` (and gated models from
    ``AWS_JUMPSTART_GATED_CONTENT_BUCKET_OVERRIDE``), or from local folders named by
    ``AWS_JUMPSTART_MANIFEST_LOCAL_ROOT_DIR_OVERRIDE`` and ``AWS_JUMPSTART_SPECS_LOCAL_ROOT_DIR_OVERRIDE``.

    Raises:
        DeploymentError: unknown model id/version, no image for the instance type, EULA not accepted.
    """
    # Imported here: the SDK takes seconds to import and only JumpStart deploys need it.
    from sagemaker.core import environment_variables, image_uris, model_uris
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.jumpstart.utils import verify_model_region_and_return_specs

    model_id, version, instance_type = cfg.jumpstart_model_id, cfg.jumpstart_model_version, cfg.instance_type
    what = f"JumpStart model {model_id!r} version {version!r}"
    try:
        sm_session = Session(boto_session=session, sagemaker_client=session.client("sagemaker", region_name=region))
        common: dict[str, Any] = {
            "region": region,
            "model_id": model_id,
            "model_version": version,
            "sagemaker_session": sm_session,
        }
        specs = verify_model_region_and_return_specs(
            model_id=model_id, version=version, scope="inference", region=region, sagemaker_session=sm_session
        )
        if specs.hosting_eula_key and not cfg.accept_eula:
            raise DeploymentError(f"{what} requires accepting its EULA: set endpoint.accept_eula: true")
        if not instance_type:
            instance_type = specs.default_inference_instance_type
            log.info("%s: no instance_type given, using JumpStart's default %s", what, instance_type)
        supported = specs.supported_inference_instance_types or []
        if supported and instance_type not in supported:
            log.warning("%s does not list %s among its instance types %s", what, instance_type, supported)
        image = image_uris.retrieve(framework=None, image_scope="inference", instance_type=instance_type, **common)
        data = model_uris.retrieve(model_scope="inference", instance_type=instance_type, **common)
        env = environment_variables.retrieve_default(
            include_aws_sdk_env_vars=False, instance_type=instance_type, **common
        )
    except DeploymentError:
        raise
    except (KeyError, ValueError, RuntimeError) as exc:
        raise DeploymentError(f"{what}: {str(exc).strip(chr(39))}") from exc
    except Exception as exc:  # botocore errors reading the JumpStart bucket
        raise _describe(f"reading {what} from JumpStart", exc) from exc
    deploy_kwargs = specs.deploy_kwargs or {}
    env = {**env, **cfg.env}
    return ContainerSpec(
        image_uri=image,
        model_data=_model_data_source(data, cfg.accept_eula) if isinstance(data, str) else data,
        env=env,
        startup_timeout_s=cfg.container_startup_timeout_s or deploy_kwargs.get("container_startup_health_check_timeout"),
        download_timeout_s=deploy_kwargs.get("model_data_download_timeout"),
        network_isolation=bool(specs.inference_enable_network_isolation),
        source=f"jumpstart:{model_id}@{specs.version}",
        instance_type=instance_type,
    )


# ---------------------------------------------------------------- deploy


def wait_for_endpoint(client: Any, name: str, timeout_s: float, poll_s: float = 15.0) -> dict[str, Any]:
    """Poll DescribeEndpoint until the endpoint is InService, logging progress.

    Raises:
        DeploymentError: the endpoint failed (with SageMaker's FailureReason) or the wait timed out.
    """
    t0 = time.monotonic()
    last_status, last_log = None, t0
    while True:
        desc = client.describe_endpoint(EndpointName=name)
        status = desc["EndpointStatus"]
        progress.deploy_status(status)
        elapsed = time.monotonic() - t0
        if status == "InService":
            log.info("endpoint %s is InService after %.0f s", name, elapsed)
            return desc
        if status in ("Failed", "OutOfService", "Deleting", "RollingBack"):
            reason = desc.get("FailureReason") or "no reason given"
            raise DeploymentError(f"endpoint {name} is {status}: {reason}")
        if status != last_status or time.monotonic() - last_log >= 60:
            log.info("endpoint %s: %s (%.0f s elapsed, timeout %.0f s)", name, status, elapsed, timeout_s)
            last_status, last_log = status, time.monotonic()
        if elapsed >= timeout_s:
            raise DeploymentError(f"endpoint {name} not InService after {timeout_s:.0f} s (last status {status})")
        interrupts.sleep(max(0.01, min(poll_s, timeout_s - elapsed)))


def _existing(cfg: SageMakerEndpoint, experiment: str, client: Any, region: str) -> DeployedEndpoint:
    name = cfg.endpoint_name
    try:
        desc = client.describe_endpoint(EndpointName=name)
    except Exception as exc:
        if _not_found(exc):
            raise DeploymentError(f"existing endpoint {name!r} not found in {region}") from exc
        raise _describe(f"describing endpoint {name}", exc) from exc
    if desc["EndpointStatus"] != "InService":
        raise DeploymentError(f"existing endpoint {name!r} is {desc['EndpointStatus']}, not InService")
    log.info("benchmarking existing endpoint %s in %s (nothing deployed)", name, region)
    return DeployedEndpoint(
        experiment=experiment,
        provider="sagemaker",
        url=cfg.runtime_endpoint_url,
        endpoint_name=name,
        region=region,
        created=[],
        keep=True,
    )


def fmbench_tags(run_id: str, experiment: str, config_name: str | None) -> list[dict[str, str]]:
    """The tags on every resource fmbench creates: how `fmbench cleanup` and adoption know them."""
    tags = [{"Key": TAG_RUN_ID, "Value": run_id[:256]}, {"Key": TAG_EXPERIMENT, "Value": experiment[:256]}]
    if config_name:
        tags.append({"Key": TAG_CONFIG, "Value": config_name[:256]})
    return tags


def run_url_tags(run_url: str | None) -> list[dict[str, str]]:
    """The `TAG_RUN_URL` tag for a run stored at ``run_url``: none for a local directory (a path on
    this host says nothing to another one; this host's lock has it) or a URL longer than a tag value."""
    if run_url and run_url.startswith("s3://") and len(run_url) <= 256:
        return [{"Key": TAG_RUN_URL, "Value": run_url}]
    return []


def resource_tags(client: Any, arn: str) -> dict[str, str]:
    """A SageMaker resource's tags as a dict (all pages)."""
    tags: dict[str, str] = {}
    kwargs: dict[str, Any] = {"ResourceArn": arn}
    while True:
        page = client.list_tags(**kwargs)
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        if not page.get("NextToken"):
            return tags
        kwargs["NextToken"] = page["NextToken"]


def _ours(tags: dict[str, str], wanted: list[dict[str, str]]) -> bool:
    # A resource without the config-name tag (made before fmbench tagged it) still matches on the
    # run id and experiment; one tagged with another config name does not.
    want = {t["Key"]: t["Value"] for t in wanted}
    return all(tags.get(k) == v for k, v in want.items() if k != TAG_CONFIG) and (
        TAG_CONFIG not in want or tags.get(TAG_CONFIG, want[TAG_CONFIG]) == want[TAG_CONFIG])


def _iso(when: Any = None) -> str:
    """UTC ISO time of a botocore datetime (or of now)."""
    when = when or _dt.datetime.now(_dt.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return str(when.astimezone(_dt.UTC).isoformat(timespec="milliseconds"))


def _describe_or_none(client: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(client.describe_endpoint(EndpointName=name))
    except Exception as exc:
        if _not_found(exc):
            return None
        raise


def _wait_until_gone(client: Any, name: str, timeout_s: float, poll_s: float) -> None:
    t0 = time.monotonic()
    while _describe_or_none(client, name) is not None:
        if time.monotonic() - t0 >= timeout_s:
            raise DeploymentError(f"endpoint {name} still exists {timeout_s:.0f} s after deleting it")
        interrupts.sleep(max(0.01, poll_s))


def _leftovers(client: Any, name: str, wanted: list[dict[str, str]]) -> list[str]:
    """This run's endpoint config and model of ``name`` that still exist (a run killed mid-deploy)."""
    return list(_leftover_arns(client, name, wanted))


def _leftover_arns(client: Any, name: str, wanted: list[dict[str, str]]) -> dict[str, str]:
    """`_leftovers`, each with its ARN."""
    found: dict[str, str] = {}
    for kind, describe, arn_key in (
        ("endpoint-config", lambda: client.describe_endpoint_config(EndpointConfigName=name), "EndpointConfigArn"),
        ("model", lambda: client.describe_model(ModelName=name), "ModelArn"),
    ):
        try:
            arn = describe()[arn_key]
        except Exception as exc:
            if _not_found(exc):
                continue
            raise
        if not _ours(resource_tags(client, arn), wanted):
            raise DeploymentError(f"{kind} {name} exists but was not created by this fmbench run "
                                  "(its fmbench tags differ); fmbench leaves it alone: delete or rename it")
        found[f"{kind}:{name}"] = arn
    return found


def _adopt(client: Any, handle: DeployedEndpoint, desc: dict[str, Any], wanted: list[dict[str, str]],
           timeout_s: float, poll_s: float, run_id: str, where: list[dict[str, str]]) -> DeployedEndpoint | None:
    """Reuse the endpoint an interrupted attempt of this run left, or clear it away when it failed.

    Returns the adopted handle (InService), or None when the caller should create the endpoint
    (nothing, or only a failed endpoint that is now deleted, was there).
    """
    name = str(handle.endpoint_name)
    found_tags = resource_tags(client, desc["EndpointArn"])
    if not _ours(found_tags, wanted):
        raise DeploymentError(f"endpoint {name} exists but was not created by this fmbench run (its fmbench tags "
                              "differ); fmbench leaves it alone: delete it or use another run id")
    status = desc["EndpointStatus"]
    leftover_arns = _leftover_arns(client, name, wanted)
    leftovers = list(leftover_arns)
    if status in ("Failed", "OutOfService", "RollingBack", "Deleting"):
        log.warning("endpoint %s of an earlier attempt of this run is %s: deleting it and deploying anew",
                    name, status)
        if status != "Deleting":
            delete_created(client, [f"endpoint:{name}"])
        _wait_until_gone(client, name, timeout_s, poll_s)
        handle.earlier_gone_at, handle.deleted_failed_earlier = _iso(), status != "Deleting"
        delete_created(client, leftovers)
        return None
    handle.created = [*leftovers, f"endpoint:{name}"]
    handle.adopted = True
    # This run's again: its tags say so from now on (they named the killed attempt's host and time,
    # and where that attempt stored the run, if elsewhere: the three were tagged alike, so the endpoint's
    # tag stands for all).
    moved = found_tags.get(TAG_RUN_URL) != (where[0]["Value"] if where else None)
    for ref, arn in [*leftover_arns.items(), (f"endpoint:{name}", desc["EndpointArn"])]:
        kind, _, rname = ref.partition(":")
        HEARTBEATS.add(run_id, kind, rname, client, arn)
        if not moved:
            continue
        try:
            if where:
                client.add_tags(ResourceArn=arn, Tags=where)
            else:  # (stored locally now: an S3 URL of the earlier attempt is not where this run is)
                client.delete_tags(ResourceArn=arn, TagKeys=[TAG_RUN_URL])
        except Exception as exc:  # noqa: BLE001 - only cleanup from another host reads it
            log.warning("could not tag %s with where run %s is stored (%s): cleanup without the config "
                        "finds the run only on this host", ref, run_id, exc)
    HEARTBEATS.renew_now()
    handle.created_at = _iso(desc.get("CreationTime"))
    if status != "InService":
        log.info("endpoint %s of an earlier attempt of this run is %s: waiting for it", name, status)
        desc = wait_for_endpoint(client, name, timeout_s, poll_s=poll_s)
        handle.in_service_at = _iso()
    else:
        handle.in_service_at = _iso(desc.get("LastModifiedTime") or desc.get("CreationTime"))
    variants = desc.get("ProductionVariants") or []
    if variants and variants[0].get("CurrentInstanceCount"):
        handle.instance_count = int(variants[0]["CurrentInstanceCount"])
    log.info("adopted endpoint %s (%s, created %s by an earlier attempt of this run)", name, status,
             handle.created_at)
    return handle


def _undo_deploy(client: Any, handle: DeployedEndpoint, experiment: str, step: str,
                 exc: BaseException) -> BaseException:
    """Delete what a deploy created before it failed or was interrupted (an orphan would bill);
    returns what to raise: the interrupt itself, or a `DeploymentError` naming the step and the cleanup.
    Either carries how far the deploy got (`note_deploy_state`), ``created`` being what is left."""
    if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM, a cancelled run
        if handle.created:
            log.warning("deploy of %s interrupted: deleting %s", experiment, ", ".join(handle.created))
            removed, _ = delete_created(client, handle.created)
            handle.created = [c for c in handle.created if c not in removed]
        note_deploy_state(exc, handle)
        return exc
    error = _describe(f"deploying {experiment} ({step})", exc)
    if handle.created:
        removed, failures = delete_created(client, handle.created)
        handle.created = [c for c in handle.created if c not in removed]
        note = f"; cleaned up {', '.join(removed) or 'nothing'}"
        if failures:
            note += f"; could NOT delete {', '.join(failures)}"
        error = DeploymentError(str(error) + note)
    note_deploy_state(error, handle)
    return error


def deploy_sagemaker(experiment: ExperimentConfig, run_id: str, *, config_name: str | None = None,
                     run_url: str | None = None, poll_s: float = 15.0) -> DeployedEndpoint:
    """Make a SageMaker experiment's endpoint InService (or check an existing one).

    Creates model, endpoint config and endpoint (tagged with the run id, experiment and config
    name, and with where the run is stored when that is S3), waits for InService. If any step
    fails, what was already created is deleted before the error is raised. When this run (same run id) already created the endpoint, in an attempt that
    was killed, it is adopted instead: waited for while Creating, deleted and created anew when
    Failed; resources with the same name but other fmbench tags are never touched. The error
    raised says how far the deploy got (`fmbench.deploy.deploy_state`).

    Raises:
        DeploymentError: credentials, JumpStart resolution, a SageMaker API error, FailureReason
            of a failed endpoint, or the deploy timeout; one line naming the cause.
    """
    try:
        return _deploy_sagemaker(experiment, run_id, config_name, run_url, poll_s)
    except BaseException as exc:
        if deploy_state(exc) is None:  # it ended before it made or looked for anything
            note_deploy_state(exc, DeployedEndpoint(experiment=experiment.name, provider="sagemaker"))
        raise


def _deploy_sagemaker(experiment: ExperimentConfig, run_id: str, config_name: str | None, run_url: str | None,
                      poll_s: float) -> DeployedEndpoint:
    cfg = experiment.endpoint
    if not isinstance(cfg, SageMakerEndpoint):
        raise DeploymentError(f"experiment {experiment.name!r} is not a SageMaker experiment")
    try:
        client, region = _sagemaker_client(cfg)
    except DeploymentError:
        raise
    except Exception as exc:
        raise _describe("creating the SageMaker client", exc) from exc
    if cfg.endpoint_name:
        return _existing(cfg, experiment.name, client, region)

    if not cfg.role_arn:
        raise DeploymentError(f"experiment {experiment.name!r}: endpoint.role_arn is required to deploy a model")
    if cfg.jumpstart_model_id:
        session, _ = _session(cfg)
        spec = jumpstart_container(cfg, session, region)
    else:
        spec = image_container(cfg)

    name = resource_name(experiment.name, run_id)
    tags = fmbench_tags(run_id, experiment.name, config_name)
    where = run_url_tags(run_url)
    if not spec.instance_type:
        raise DeploymentError(f"experiment {experiment.name!r}: endpoint.instance_type is required")
    handle = DeployedEndpoint(
        experiment=experiment.name,
        provider="sagemaker",
        url=cfg.runtime_endpoint_url,
        endpoint_name=name,
        region=region,
        created=[],
        keep=cfg.keep_endpoint,
        instance_type=spec.instance_type,
        instance_count=cfg.instance_count,
    )
    step = "looking for an endpoint of an earlier attempt of this run"
    try:
        earlier = _describe_or_none(client, name)
        if earlier is not None:
            handle.found_earlier = True  # (until adopted or gone, it is still there: the run bills it)
            step = "adopting the endpoint of an earlier attempt of this run"
            if _adopt(client, handle, earlier, tags, cfg.deploy_timeout_s, poll_s, run_id, where) is not None:
                return handle
        else:
            handle.earlier_gone_at = _iso()  # (an earlier attempt's endpoint, if it had one, was gone by now)
            delete_created(client, _leftovers(client, name, tags))
    except BaseException as exc:
        error = _undo_deploy(client, handle, experiment.name, step, exc)
        if error is exc:
            raise
        raise error from exc

    log.info("deploying %s (%s) on %d x %s as %s", experiment.name, spec.source, cfg.instance_count,
             spec.instance_type, name)
    secrets = secret_env(cfg, f"experiments[{experiment.name}].endpoint")
    step = "creating model"
    try:
        container: dict[str, Any] = {"Image": spec.image_uri, "Environment": {**spec.env, **secrets}}
        if isinstance(spec.model_data, dict):
            container["ModelDataSource"] = spec.model_data
        elif spec.model_data:
            container["ModelDataUrl"] = spec.model_data
        made = client.create_model(
            ModelName=name,
            ExecutionRoleArn=cfg.role_arn,
            PrimaryContainer=container,
            EnableNetworkIsolation=spec.network_isolation,
            Tags=tags + where + live_tags(),
        )
        handle.created.append(f"model:{name}")
        HEARTBEATS.add(run_id, "model", name, client, made.get("ModelArn"))

        step = "creating endpoint config"
        variant: dict[str, Any] = {
            "VariantName": VARIANT_NAME,
            "ModelName": name,
            "InitialInstanceCount": cfg.instance_count,
            "InstanceType": spec.instance_type,
        }
        if spec.startup_timeout_s:
            variant["ContainerStartupHealthCheckTimeoutInSeconds"] = int(spec.startup_timeout_s)
        if spec.download_timeout_s:
            variant["ModelDataDownloadTimeoutInSeconds"] = int(spec.download_timeout_s)
        if cfg.volume_size_gb:
            variant["VolumeSizeInGB"] = cfg.volume_size_gb
        made = client.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant],
                                             Tags=tags + where + live_tags())
        handle.created.append(f"endpoint-config:{name}")
        HEARTBEATS.add(run_id, "endpoint-config", name, client, made.get("EndpointConfigArn"))

        step = "creating endpoint"
        # Billing starts with the CreateEndpoint call; the time before it is the conservative bound. The
        # endpoint is in ``created`` before the call, so a call that fails once SageMaker made it (a read
        # timeout) still has it deleted; ``created_at`` only once the call returned (none was made before).
        calling = _iso()
        handle.created.append(f"endpoint:{name}")
        made = client.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=tags + where + live_tags())
        handle.created_at = calling
        HEARTBEATS.add(run_id, "endpoint", name, client, made.get("EndpointArn"))

        step = "waiting for InService"
        wait_for_endpoint(client, name, cfg.deploy_timeout_s, poll_s=poll_s)
        handle.in_service_at = _iso()
    except BaseException as exc:
        error = _undo_deploy(client, handle, experiment.name, step, exc)
        if error is exc:
            raise
        if any(value and value in str(error) for value in secrets.values()):  # a validation error may quote them
            # (and so may the error it came from: it is not chained, so no traceback shows it). Every
            # value goes, however short: a container's secrets are not AWS credentials. What the failed
            # deploy left (still billed) stays with the error, as `_undo_deploy` noted it.
            redacted = DeploymentError(redact_aws(str(error), tuple(secrets.values()), min_len=1))
            state = deploy_state(error)
            if state is not None:
                note_deploy_state(redacted, state)
            raise redacted from None
        raise error from exc
    return handle


# ---------------------------------------------------------------- teardown


def delete_created(client: Any, created: list[str], quiet: bool = False) -> tuple[list[str], list[str]]:
    """Delete the given 'kind:name' resources, endpoint first; already-deleted counts as removed.
    ``quiet``: each deletion is logged at debug level only (the caller prints it)."""
    level = logging.DEBUG if quiet else logging.INFO
    removed: list[str] = []
    failures: list[str] = []
    calls = {
        "endpoint": lambda n: client.delete_endpoint(EndpointName=n),
        "endpoint-config": lambda n: client.delete_endpoint_config(EndpointConfigName=n),
        "model": lambda n: client.delete_model(ModelName=n),
    }
    order = {kind: i for i, kind in enumerate(_KINDS_IN_TEARDOWN_ORDER)}
    for item in sorted(created, key=lambda s: order.get(s.split(":", 1)[0], 99)):
        kind, _, name = item.partition(":")
        if kind not in calls:
            failures.append(f"{item} (unknown kind)")
            continue
        HEARTBEATS.discard(kind, name)  # (being deleted: no longer in progress, whatever the call's outcome)
        try:
            calls[kind](name)
            log.log(level, "deleted %s %s", kind, name)
        except Exception as exc:  # noqa: BLE001 - every failure is reported after trying the rest
            if not _not_found(exc):
                failures.append(f"{item} ({_describe('delete', exc)})")
                continue
            log.log(level, "%s %s was already deleted", kind, name)
        removed.append(item)
    return removed, failures


def teardown_sagemaker(deployed: DeployedEndpoint, experiment: ExperimentConfig) -> list[str]:
    """Delete exactly what `deploy_sagemaker` created (endpoint, endpoint config, model).

    Nothing is deleted when the endpoint is kept (``keep_endpoint``) or was not created by the
    run. Deleting something already gone is fine, so teardown can be repeated.

    Returns:
        The 'kind:name' resources removed.

    Raises:
        DeploymentError: a resource could not be deleted (all others are still attempted).
    """
    cfg = experiment.endpoint
    if not deployed.created:
        return []
    keep = deployed.keep or (isinstance(cfg, SageMakerEndpoint) and cfg.keep_endpoint)
    if keep:
        log.warning("keeping endpoint %s (keep_endpoint): it bills until you delete it", deployed.endpoint_name)
        return []
    if not isinstance(cfg, SageMakerEndpoint):
        raise DeploymentError(f"experiment {experiment.name!r} is not a SageMaker experiment")
    try:
        client, _ = _sagemaker_client(cfg.model_copy(update={"region": deployed.region or cfg.region}))
    except DeploymentError:
        raise
    except Exception as exc:
        raise _describe("creating the SageMaker client", exc) from exc
    removed, failures = delete_created(client, deployed.created)
    if failures:
        raise DeploymentError(f"teardown of {experiment.name}: could not delete {'; '.join(failures)}")
    return removed


# ---------------------------------------------------------------- bedrock


def deploy_bedrock(experiment: ExperimentConfig, run_id: str, *, config_name: str | None = None,
                   run_url: str | None = None) -> DeployedEndpoint:
    """Bedrock models are served by AWS: nothing to deploy; resolves the region only."""
    cfg = experiment.endpoint
    if not isinstance(cfg, BedrockEndpoint):
        raise DeploymentError(f"experiment {experiment.name!r} is not a Bedrock experiment")
    _, region = _session(cfg)
    return DeployedEndpoint(
        experiment=experiment.name,
        provider="bedrock",
        url=cfg.runtime_endpoint_url,
        endpoint_name=cfg.model_id,
        region=region,
        created=[],
        keep=True,
    )


def teardown_bedrock(deployed: DeployedEndpoint, experiment: ExperimentConfig) -> list[str]:
    """Nothing to tear down for Bedrock."""
    return []


register_provider("sagemaker", deploy_sagemaker, teardown_sagemaker)
register_provider("bedrock", deploy_bedrock, teardown_bedrock)
