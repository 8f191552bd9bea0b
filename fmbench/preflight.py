"""Cheap checks run before a benchmark starts, so bad input fails in seconds with one clear line
instead of minutes later inside the flow.

Endpoints that exist before the run (OpenAI-compatible servers, Bedrock models, existing SageMaker
endpoints) get one probe request (``max_tokens: 1``, not recorded in any shard): a wrong model name
or endpoint, refused or expired credentials, or an answer of the wrong shape is then reported
before anything is measured. SageMaker experiments that deploy get one read-only control-plane
call instead (`check_sagemaker_access`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from fmbench.config import (
    BedrockEndpoint,
    BenchmarkConfig,
    ExperimentConfig,
    OpenAIEndpoint,
    SageMakerEndpoint,
    SimulatedEndpoint,
)
from fmbench.errors import (
    ConfigError,
    CredentialsError,
    DatasetError,
    DeploymentError,
    EndpointConnectionError,
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
    StorageError,
    TokenizerError,
)
from fmbench.protocol import Prompt

log = logging.getLogger(__name__)

_FULL_CHECK_BYTES = 8 * 1024 * 1024  # local dataset files up to this size are fully checked up front


def preflight(cfg: BenchmarkConfig, probe: bool = True, run_id: str | None = None) -> None:
    """Check the tokenizer, the dataset files (small local files fully), AWS credentials and existing endpoints.

    Before SageMaker deploys it also warns, in one line per region, when endpoints of earlier
    fmbench runs (not ``run_id``) are still alive and billing (`warn_live_endpoints`).

    Raises:
        TokenizerError, DatasetError, ConfigError, EndpointError: naming what is wrong and where.
    """
    from fmbench.datasets import build_dataset_prompts, dataset_location, load_spec_tokenizer
    from fmbench.deploy.local import check_reachable
    from fmbench.pipeline import bucketing_jobs

    jobs = bucketing_jobs(cfg)
    # Every tokenizer an experiment uses is loaded now: an hf: tokenizer is downloaded (or its
    # absence on an offline machine reported) before anything is measured.
    tokenizers = {tok: _load_for(cfg, tok, load_spec_tokenizer) for tok in dict.fromkeys(t for _, t in jobs)}
    for e in cfg.experiments:
        # A simulated server's own tokenizer is loaded by the server at deploy: a bad one would be
        # a failed deploy there, not the config error it is.
        if isinstance(e.endpoint, SimulatedEndpoint) and e.endpoint.tokenizer is not None:
            try:
                load_spec_tokenizer(cfg, e.endpoint.tokenizer)
            except TokenizerError as exc:
                raise TokenizerError(f"experiments[{e.name}].endpoint.tokenizer: {exc}") from exc
    for ds in cfg.datasets:
        location = dataset_location(cfg, ds)
        if isinstance(location, str) and location.startswith("hf:"):
            from fmbench.datasets.longbench import check_hub_subset

            check_hub_subset(location, ds.name)  # offline: one line now, not ~25 s of retries in the run
        if isinstance(location, Path) and not location.is_file():
            what = "a directory, not a file" if location.is_dir() else "file not found"
            raise DatasetError(f"datasets[{ds.name}].path: {what}: {location}")
        if isinstance(location, Path) and location.stat().st_size <= _FULL_CHECK_BYTES:
            # A small local file is read, rendered and bucketed now (seconds), so a bad line, a
            # missing template field or prompts longer than every bucket fail before the run starts.
            for tok in (t for name, t in jobs if name == ds.name):
                build_dataset_prompts(cfg, ds, tokenizers[tok])
    deploying: list[SageMakerEndpoint] = []
    for e in cfg.experiments:
        if isinstance(e.endpoint, (BedrockEndpoint, SageMakerEndpoint)):
            where = f"experiments[{e.name}].endpoint"
            check_aws_credentials(e.endpoint, where)
            existing = isinstance(e.endpoint, BedrockEndpoint) or bool(e.endpoint.endpoint_name)
            if isinstance(e.endpoint, SageMakerEndpoint) and e.endpoint.env_from:
                from fmbench.deploy.sagemaker import secret_env

                secret_env(e.endpoint, where)  # its secrets are set here, before anything is deployed
            if probe and existing:
                probe_endpoint(e, None, where)
            elif probe and isinstance(e.endpoint, SageMakerEndpoint):
                check_sagemaker_access(e.endpoint, where)
                deploying.append(e.endpoint)
        if isinstance(e.endpoint, OpenAIEndpoint):
            where = f"experiments[{e.name}].endpoint"
            check_reachable(e.endpoint.base_url, f"{where}.base_url")
            if probe:
                probe_endpoint(e, e.endpoint.base_url, where)
    if deploying:
        warn_live_endpoints(deploying, run_id)


def _load_for(cfg: BenchmarkConfig, tokenizer: str | None, load: Any) -> Any:
    """Load a tokenizer for preflight; its error names the experiments that use it."""
    try:
        return load(cfg, tokenizer)
    except TokenizerError as exc:
        users = [e.name for e in cfg.experiments if cfg.tokenizer_for(e) == (tokenizer or cfg.tokenizer)]
        field = "tokenizer" if tokenizer is None else f"experiments[{users[0]}].tokenizer"
        raise TokenizerError(f"{field}: {exc}") from exc


def warn_live_endpoints(endpoints: list[SageMakerEndpoint], run_id: str | None = None) -> int:
    """Warn in one line per region when endpoints that earlier fmbench runs created are still alive.

    Never fails the run: a failing list call is only a debug note. Returns how many were found.
    """
    from fmbench.deploy.inventory import (
        hourly_total,
        list_fmbench_resources,
        runs_in_progress,
        sagemaker_client,
    )

    seen: set[tuple[str | None, str | None, str | None]] = set()
    total = 0
    for ep in endpoints:
        key = (ep.region, ep.profile, ep.endpoint_url)
        if key in seen:
            continue
        seen.add(key)
        try:
            client, region = sagemaker_client(ep.region, ep.profile, ep.endpoint_url, quick=True)
            alive = list_fmbench_resources(client, region, kinds=("endpoint",), exclude_run_id=run_id)
            live = runs_in_progress(alive)
        except Exception as exc:  # noqa: BLE001 - a warning must never stop the run
            log.debug("could not list earlier fmbench endpoints in %s: %s", ep.region or "the default region", exc)
            continue
        running = sorted({r.run_id for r in alive if (r.config_name, r.run_id) in live})
        if running:  # (not left behind: their runs delete them)
            log.info("%d fmbench run(s) in progress in %s besides this one (run ids: %s)", len(running), region,
                     ", ".join(running[:5]) + (" ..." if len(running) > 5 else ""))
        alive = [r for r in alive if (r.config_name, r.run_id) not in live]
        if not alive:
            continue
        total += len(alive)
        hourly, unpriced = hourly_total(alive)
        runs = sorted({r.run_id for r in alive})
        price = f"${hourly:,.2f}/h" + (f" plus {unpriced} unpriced" if unpriced else "")
        # The command searches where this endpoint is: its region, profile and API URL.
        command = (f"AWS_ENDPOINT_URL_SAGEMAKER={ep.endpoint_url} " if ep.endpoint_url else "") + \
            f"fmbench cleanup --region {region}" + (f" --profile {ep.profile}" if ep.profile else "")
        log.warning("%d endpoint(s) of earlier fmbench runs still running in %s, billing %s (run ids: %s); "
                    "list them with `%s`, delete them with --yes",
                    len(alive), region, price, ", ".join(runs[:5]) + (" ..." if len(runs) > 5 else ""), command)
    return total


def check_output(cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None:
    """Check the run id and the output location: a remote one's bucket exists and can be listed, a
    local one is (or can become) a directory this process may write in.

    Raises:
        ConfigError: an invalid run id, or an output that names no place (``s3://`` without a bucket).
        StorageError: the bucket does not exist, access is denied, or a local path is not a directory.
    """
    from fmbench import storage
    from fmbench.names import check_run_id

    check_run_id(run_id)
    out = storage.output_location(output or cfg.output)
    try:
        storage.check_location(out)
    except StorageError as exc:
        raise StorageError(f"output {out}: {exc}") from exc


def check_aws_credentials(endpoint: BedrockEndpoint | SageMakerEndpoint, where: str) -> None:
    """Fail when the standard AWS chain (environment, profile, SSO, role) yields no credentials.

    Credentials that carry their expiry (SSO, assumed roles, ``credential_process``,
    ``AWS_CREDENTIAL_EXPIRATION``) are checked here, without a request; session credentials without
    one are only known to AWS to have expired, which the probe request of an existing endpoint finds.
    """
    import botocore.exceptions

    from fmbench.aws import make_session, profile_not_found

    try:
        credentials = make_session(endpoint.region, endpoint.profile).get_credentials()
        if credentials is not None:
            credentials.get_frozen_credentials()  # refreshes credentials that are due; raises if still expired
    except botocore.exceptions.ProfileNotFound as exc:
        raise CredentialsError(profile_not_found(endpoint.profile, where)) from exc
    except (botocore.exceptions.TokenRetrievalError, botocore.exceptions.SSOTokenLoadError,
            botocore.exceptions.UnauthorizedSSOTokenError) as exc:
        raise CredentialsError(f"{where}: AWS credentials expired (SSO session: {exc}); sign in again "
                          "(aws sso login)") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise CredentialsError(f"{where}: cannot load AWS credentials: {exc}") from exc
    except RuntimeError as exc:  # botocore: "refreshed credentials are still expired"
        if "expired" not in str(exc):
            raise
        raise CredentialsError(f"{where}: AWS credentials expired and could not be refreshed "
                          f"(source: {getattr(credentials, 'method', 'unknown')}); get new credentials") from exc
    if credentials is None:
        raise CredentialsError(
            f"{where}: no AWS credentials found (standard chain: environment, profile, SSO, instance role); "
            "configure credentials or set endpoint.profile"
        )


_PROBE_ATTEMPTS = 3

# AWS error codes of a refused request -> what the user should do about it.
_AWS_HINTS = (
    (("ExpiredToken", "RequestExpired"), ("the AWS credentials have expired: get new ones (aws sso login, or "
     "new session credentials)")),
    (("UnrecognizedClient", "InvalidClientTokenId", "InvalidSignature", "SignatureDoesNotMatch",
      "IncompleteSignature"), "AWS rejected the credentials (check the access key, secret and session token)"),
    (("AccessDenied",), ("access denied: check the IAM permissions and, for Bedrock, that access to the model is "
     "granted in this region")),
    (("ResourceNotFound", "could not be found", "not found"), "not found: check model_id / endpoint_name and region"),
    (("ValidationException",), "the request was refused: check model_id / endpoint_name, region and payload"),
)


def aws_hint(message: str) -> str:
    """What to do about a refused AWS call, from its error code or message ('' when unknown)."""
    for needles, hint in _AWS_HINTS:
        if any(n in message for n in needles):
            return hint
    return ""


_PREFLIGHT_ENDPOINT = "fmbench-preflight-no-such-endpoint"


def check_sagemaker_access(endpoint: SageMakerEndpoint, where: str) -> None:
    """Before deploying, make one read-only SageMaker call the deploy needs anyway (DescribeEndpoint
    of a name that does not exist), so refused or expired credentials, a missing region or an
    unreachable API fail now, in one line, instead of in the deploy step.

    Raises:
        ConfigError: no region. CredentialsError: AWS refused the call. DeploymentError: the API cannot be reached.
    """
    import botocore.config
    import botocore.exceptions

    from fmbench.aws import make_session

    try:
        session = make_session(endpoint.region, endpoint.profile)
        client = session.client(
            "sagemaker", region_name=endpoint.region or session.region_name, endpoint_url=endpoint.endpoint_url,
            config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=30),
        )
        client.describe_endpoint(EndpointName=_PREFLIGHT_ENDPOINT)
    except botocore.exceptions.NoRegionError as exc:
        raise ConfigError(f"{where}.region: no AWS region (set endpoint.region or AWS_DEFAULT_REGION)") from exc
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        code, message = str(err.get("Code", "Error")), str(err.get("Message", ""))
        if code == "ValidationException" and "find endpoint" in message.lower():
            return  # the expected answer: credentials accepted, permission granted, no such endpoint
        hint = aws_hint(f"{code}: {message}")
        raise CredentialsError(f"{where}: SageMaker refused a read-only call (DescribeEndpoint): {code}: {message}"
                          f"{'; ' + hint if hint else ''}") from exc
    except botocore.exceptions.EndpointConnectionError as exc:
        raise DeploymentError(f"{where}: cannot reach the SageMaker API ({exc})") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise DeploymentError(f"{where}: SageMaker API check failed: {exc}") from exc


def probe_endpoint(experiment: ExperimentConfig, url: str | None, where: str) -> None:
    """Send one one-token request and turn a failure into a one-line error naming the likely cause."""
    from fmbench.endpoints import make_client

    inference = experiment.inference.model_copy(update={"max_tokens": 1, "timeout_s": min(
        30.0, experiment.inference.timeout_s)})

    answers: list[Any] = []

    async def once() -> None:
        client = make_client(experiment.endpoint, inference, url=url)
        await client.open(1)
        try:
            answers.append(await client.complete(Prompt("probe", "Hello", 1)))
        finally:
            await client.close()

    aws = isinstance(experiment.endpoint, (BedrockEndpoint, SageMakerEndpoint))
    try:
        for attempt in range(_PROBE_ATTEMPTS):
            try:
                asyncio.run(once())
                break
            except EndpointThrottled:
                # Throttling is what a benchmark measures, not bad input: the endpoint exists and
                # took the credentials. The run goes on and records it.
                break
            except EndpointHTTPError as exc:
                # A server error may be passing: try again; only a server that keeps failing stops the run.
                if (exc.status or 0) < 500 or attempt == _PROBE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
    except EndpointHTTPError as exc:
        hint = aws_hint(str(exc)) if aws else ""
        hint = hint or {401: "the API key was refused (check api_key_env)",
                        403: "access denied (check the API key's permissions)",
                        404: "not found (check base_url and the model name)"}.get(exc.status or 0, "")
        raise EndpointHTTPError(f"{where}: probe request failed: {exc}{'; ' + hint if hint else ''}",
                                exc.status) from exc
    except EndpointProtocolError as exc:
        shape = "has an unexpected shape (check payload)" if aws else "is not OpenAI-compatible"
        raise EndpointProtocolError(f"{where}: the answer {shape}: {exc}") from exc
    except (EndpointTimeout, EndpointConnectionError) as exc:
        raise type(exc)(f"{where}: probe request failed: {exc}") from exc
    except EndpointError as exc:
        raise EndpointError(f"{where}: {exc}") from exc
    except ConfigError as exc:  # e.g. a ca_bundle that cannot be read
        raise ConfigError(f"{where}: {exc}") from exc
    if inference.stream and answers and not answers[-1].chunk_times and answers[-1].text:
        # (a server or proxy that ignores "stream": true answers whole: its first token arrives with its last)
        log.warning("%s: asked to stream, the endpoint answered whole (no streamed chunks): its TTFT will "
                    "be the whole answer's time and it has no TPOT or inter-token times; inference.stream: "
                    "false measures it as what it is", where)
