"""Endpoint clients, and `make_client`, the one place a config becomes a client.

Each provider maps to a factory in `_FACTORIES`; adding a provider (SageMaker, Bedrock) means
adding one function and one dict entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fmbench.config import InferenceConfig, OpenAIEndpoint, SimulatedEndpoint
from fmbench.errors import EndpointError
from fmbench.protocol import Completion, EndpointClient, Prompt
from fmbench.settings import variable_values

__all__ = ["Completion", "EndpointClient", "Prompt", "make_client"]


def _simulated(endpoint: SimulatedEndpoint, inference: InferenceConfig, url: str | None) -> EndpointClient:
    from fmbench.endpoints.openai import OpenAIClient

    if not url:
        raise EndpointError("simulated endpoint: no server URL given (start the server and pass its url)")
    # The simulator's answer model answers from the prompt's reference answers, sent in the payload.
    return OpenAIClient(url.rstrip("/") + "/v1", endpoint.model, api=endpoint.api, inference=inference,
                        send_answers=endpoint.answer_accuracy is not None)


def _openai(endpoint: OpenAIEndpoint, inference: InferenceConfig, url: str | None) -> EndpointClient:
    from fmbench.endpoints.openai import OpenAIClient

    api_key = None
    if endpoint.api_key_env:
        api_key = os.environ.get(endpoint.api_key_env)
        if not api_key:
            raise EndpointError(f"openai endpoint: environment variable {endpoint.api_key_env} is not set or empty")
    secret_headers = variable_values(endpoint.headers_env, lambda header, variable: EndpointError(
        f"openai endpoint: environment variable {variable} (headers_env.{header}) is not set or empty"))
    return OpenAIClient(url or endpoint.base_url, endpoint.model, api=endpoint.api, inference=inference,
                        api_key=api_key, headers=endpoint.headers, secret_headers=secret_headers,
                        ca_bundle=endpoint.ca_file())


def _sagemaker(endpoint: Any, inference: InferenceConfig, url: str | None) -> EndpointClient:
    from fmbench.endpoints.sagemaker import sagemaker_client

    return sagemaker_client(endpoint, inference, url)


def _bedrock(endpoint: Any, inference: InferenceConfig, url: str | None) -> EndpointClient:
    from fmbench.endpoints.bedrock import bedrock_client

    return bedrock_client(endpoint, inference, url)


#: provider name -> factory(endpoint config, inference config, url) -> client
_FACTORIES: dict[str, Callable[[Any, InferenceConfig, str | None], EndpointClient]] = {
    "simulated": _simulated,
    "openai": _openai,
    "sagemaker": _sagemaker,
    "bedrock": _bedrock,
}


def make_client(endpoint: Any, inference: InferenceConfig, url: str | None = None) -> EndpointClient:
    """Build the client for an experiment's endpoint.

    Args:
        endpoint: an endpoint config (`SimulatedEndpoint`, `OpenAIEndpoint`, ...).
        inference: generation parameters and timeout.
        url: for ``simulated``, the running server's base URL (without ``/v1``); for ``openai``,
            an optional override of ``base_url`` (including ``/v1``).

    Raises:
        EndpointError: unknown provider, missing server URL, or unset API key variable.
    """
    provider = getattr(endpoint, "provider", None)
    factory = _FACTORIES.get(provider) if isinstance(provider, str) else None
    if factory is None:
        raise EndpointError(f"no client for endpoint provider {provider!r} (known: {', '.join(sorted(_FACTORIES))})")
    return factory(endpoint, inference, url)
