"""Cheap checks run before a benchmark starts, so bad input fails in seconds with one clear line
instead of minutes later inside the flow.

Existing OpenAI-compatible endpoints get one probe request (``max_tokens: 1``, not recorded in
any shard): a wrong model name, a refused API key or an answer that is not OpenAI-shaped is then
reported before anything is measured.
"""

from __future__ import annotations

import asyncio

from fmbench.config import BenchmarkConfig, ExperimentConfig, OpenAIEndpoint, resolve_path
from fmbench.endpoints.base import Prompt
from fmbench.errors import (
    DatasetError,
    EndpointConnectionError,
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointTimeout,
)


def preflight(cfg: BenchmarkConfig, probe: bool = True) -> None:
    """Check the tokenizer, the dataset files and existing endpoints.

    Raises:
        TokenizerError, DatasetError, EndpointError: naming what is wrong and where.
    """
    from fmbench.datasets import load_run_tokenizer
    from fmbench.deploy.local import check_reachable

    load_run_tokenizer(cfg)
    for ds in cfg.datasets:
        path = getattr(ds, "path", None)
        if path and not path.startswith("hf:") and not resolve_path(cfg, path).is_file():
            raise DatasetError(f"datasets[{ds.name}].path: file not found: {resolve_path(cfg, path)}")
    for e in cfg.experiments:
        if isinstance(e.endpoint, OpenAIEndpoint):
            where = f"experiments[{e.name}].endpoint"
            check_reachable(e.endpoint.base_url, f"{where}.base_url")
            if probe:
                probe_endpoint(e, e.endpoint.base_url, where)


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
