"""Cheap checks run before a benchmark starts, so bad input fails in seconds with one clear line
instead of minutes later inside the flow.

Existing OpenAI-compatible endpoints get one probe request (``max_tokens: 1``, not recorded in
any shard): a wrong model name, a refused API key or an answer that is not OpenAI-shaped is then
reported before anything is measured.
"""

from __future__ import annotations

import asyncio

from fmbench.config import (
    BedrockEndpoint,
    BenchmarkConfig,
    ExperimentConfig,
    OpenAIEndpoint,
    SageMakerEndpoint,
    resolve_path,
)
from fmbench.endpoints.base import Prompt
from fmbench.errors import (
    ConfigError,
    DatasetError,
    EndpointConnectionError,
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointTimeout,
    StorageError,
)

_FULL_CHECK_BYTES = 8 * 1024 * 1024  # local dataset files up to this size are fully checked up front


def preflight(cfg: BenchmarkConfig, probe: bool = True) -> None:
    """Check the tokenizer, the dataset files (small local files fully), AWS credentials and existing endpoints.

    Raises:
        TokenizerError, DatasetError, ConfigError, EndpointError: naming what is wrong and where.
    """
    from fmbench.datasets import load_run_tokenizer
    from fmbench.deploy.local import check_reachable

    tokenizer = load_run_tokenizer(cfg)
    for ds in cfg.datasets:
        path = getattr(ds, "path", None)
        if path and not path.startswith("hf:") and not resolve_path(cfg, path).is_file():
            raise DatasetError(f"datasets[{ds.name}].path: file not found: {resolve_path(cfg, path)}")
        if path and not path.startswith("hf:") and resolve_path(cfg, path).stat().st_size <= _FULL_CHECK_BYTES:
            # A small local file is read, rendered and bucketed now (seconds), so a bad line, a
            # missing template field or prompts longer than every bucket fail before the run starts.
            from fmbench.datasets import build_dataset_prompts

            build_dataset_prompts(cfg, ds, tokenizer)
    for e in cfg.experiments:
        if isinstance(e.endpoint, (BedrockEndpoint, SageMakerEndpoint)):
            check_aws_credentials(e.endpoint, f"experiments[{e.name}].endpoint")
        if isinstance(e.endpoint, OpenAIEndpoint):
            where = f"experiments[{e.name}].endpoint"
            check_reachable(e.endpoint.base_url, f"{where}.base_url")
            if probe:
                probe_endpoint(e, e.endpoint.base_url, where)


def check_output(cfg: BenchmarkConfig, output: str | None, run_id: str | None) -> None:
    """Check the run id and that a remote output location's bucket exists and can be listed.

    Raises:
        ConfigError: an invalid run id.
        StorageError: the bucket does not exist or access is denied.
    """
    from fmbench import storage

    if run_id is not None and not (run_id and all(c.isalnum() or c in "-_." for c in run_id)):
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '-', '_' and '.' only")
    out = output or cfg.output
    try:
        storage.check_bucket(out)
    except StorageError as exc:
        raise StorageError(f"output {out}: {exc}") from exc


def check_aws_credentials(endpoint: BedrockEndpoint | SageMakerEndpoint, where: str) -> None:
    """Fail when the standard AWS chain (environment, profile, SSO, role) yields no credentials.

    Expired credentials are only known to AWS; they surface on the first call.
    """
    import botocore.exceptions

    from fmbench.endpoints._boto import make_session

    try:
        credentials = make_session(endpoint.region, endpoint.profile).get_credentials()
    except botocore.exceptions.ProfileNotFound as exc:
        raise ConfigError(f"{where}.profile: AWS profile {endpoint.profile!r} not found") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(f"{where}: cannot load AWS credentials: {exc}") from exc
    if credentials is None:
        raise ConfigError(
            f"{where}: no AWS credentials found (standard chain: environment, profile, SSO, instance role); "
            "configure credentials or set endpoint.profile"
        )


def probe_endpoint(experiment: ExperimentConfig, url: str | None, where: str) -> None:
    """Send one one-token request and turn a failure into a one-line error naming the likely cause."""
    from fmbench.endpoints import make_client

    inference = experiment.inference.model_copy(update={"max_tokens": 1, "timeout_s": min(
        30.0, experiment.inference.timeout_s)})

    async def once() -> None:
        client = make_client(experiment.endpoint, inference, url=url)
        await client.open(1)
        try:
            await client.complete(Prompt("probe", "Hello", 1))
        finally:
            await client.close()

    try:
        asyncio.run(once())
    except EndpointHTTPError as exc:
        hint = {401: "the API key was refused (check api_key_env)",
                403: "access denied (check the API key's permissions)",
                404: "not found (check base_url and the model name)"}.get(exc.status or 0, "")
        raise EndpointHTTPError(f"{where}: probe request failed: {exc}{'; ' + hint if hint else ''}",
                                exc.status) from exc
    except EndpointProtocolError as exc:
        raise EndpointProtocolError(f"{where}: the answer is not OpenAI-compatible: {exc}") from exc
    except (EndpointTimeout, EndpointConnectionError) as exc:
        raise type(exc)(f"{where}: probe request failed: {exc}") from exc
    except EndpointError as exc:
        raise EndpointError(f"{where}: {exc}") from exc
