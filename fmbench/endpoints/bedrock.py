"""An `EndpointClient` for Amazon Bedrock models through the Converse and ConverseStream APIs.

``modelId`` may be a model id (``meta.llama3-8b-instruct-v1:0``), a cross-region inference
profile (``us.anthropic.claude-3-5-sonnet-20240620-v1:0``) or a provisioned-throughput ARN; the
API takes all three the same way. Token counts come from the API's ``usage`` (response, or the
stream's ``metadata`` event). Streaming is timed like the other clients: each
``contentBlockDelta`` carrying text is stamped with ``time.monotonic()`` in the worker thread as
botocore hands it over (see `fmbench.endpoints._boto` for the thread-pool design).

Throttling (``ThrottlingException``, ``ServiceQuotaExceededException``, any 429) is retried at
most ``throttle_retries`` times with a doubling backoff from ``throttle_backoff_s`` (capped at
``_MAX_BACKOFF_S``), and never past the request's ``timeout_s`` counted from the first attempt.
The outcome is one record per request: after a retried success the `BedrockCompletion` says how
many attempts it took (``attempts``) and its ``t_start`` is the first attempt's, so latency and
TTFT include the time lost to throttling; when every attempt is throttled, `EndpointThrottled`
is raised with ``attempts`` set and the count in its message.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fmbench.config import BedrockEndpoint, InferenceConfig
from fmbench.endpoints._boto import (
    BotoRuntimeClient,
    translate_client_error,
)
from fmbench.endpoints.base import Completion, Prompt
from fmbench.errors import EndpointError, EndpointProtocolError, EndpointThrottled, EndpointTimeout

__all__ = ["BedrockClient", "BedrockCompletion", "bedrock_client"]

_MAX_BACKOFF_S = 30.0


@dataclass(slots=True)
class BedrockCompletion(Completion):
    """A `Completion` plus how many attempts (throttled ones included) the request took."""

    attempts: int = 1


class BedrockClient(BotoRuntimeClient):
    """Sends prompts to one Bedrock model and measures each request.

    Args:
        model_id: model id, inference profile id/ARN or provisioned-throughput ARN.
        inference: generation parameters, streaming flag and per-request timeout.
        region, profile: AWS access (standard chain when None).
        runtime_endpoint_url: override of the bedrock-runtime URL (a local test server).
        throttle_retries: retries of a throttled request.
        throttle_backoff_s: first backoff, doubling per retry.
    """

    service = "bedrock-runtime"

    def __init__(
        self,
        model_id: str,
        inference: InferenceConfig,
        region: str | None = None,
        profile: str | None = None,
        runtime_endpoint_url: str | None = None,
        throttle_retries: int = 3,
        throttle_backoff_s: float = 0.5,
    ) -> None:
        super().__init__(f"bedrock model {model_id}", inference, region, profile, runtime_endpoint_url)
        self.model_id = model_id
        self.throttle_retries = throttle_retries
        self.throttle_backoff_s = throttle_backoff_s

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The Converse request parameters for ``prompt``."""
        inf = self.inference
        config: dict[str, Any] = {"maxTokens": inf.max_tokens, "temperature": inf.temperature}
        if inf.top_p is not None:
            config["topP"] = inf.top_p
        params: dict[str, Any] = {
            "modelId": self.model_id,
            "messages": [{"role": "user", "content": [{"text": prompt.text}]}],
            "inferenceConfig": config,
        }
        if inf.extra_body:
            params["additionalModelRequestFields"] = dict(inf.extra_body)
        return params

    async def complete(self, prompt: Prompt) -> BedrockCompletion:
        """Send one request (retrying throttling within bounds) and measure it.

        Raises:
            EndpointThrottled: every attempt was throttled (``attempts`` attribute set).
            EndpointHTTPError, EndpointTimeout, EndpointConnectionError, EndpointProtocolError:
                the first non-throttling failure, not retried.
        """
        if self._client is None:
            raise EndpointError("bedrock client used before open()")
        params = self.request(prompt)
        call = self._stream if self.inference.stream else self._converse
        t_first_start = time.monotonic()
        deadline = t_first_start + self.inference.timeout_s
        backoff = self.throttle_backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result: BedrockCompletion = await self._runner.run(call, params, deadline)
            except EndpointThrottled as exc:
                wait = min(backoff, _MAX_BACKOFF_S)
                retry_after = exc.retry_after_s
                if retry_after is not None:
                    wait = max(wait, min(retry_after, _MAX_BACKOFF_S))
                out_of_time = time.monotonic() + wait >= deadline
                if attempt > self.throttle_retries or out_of_time:
                    why = "retries exhausted" if attempt > self.throttle_retries else "no time left for a retry"
                    final = EndpointThrottled(f"{exc} (throttled on all {attempt} attempts; {why})", status=exc.status)
                    final.attempts = attempt  # type: ignore[attr-defined]
                    raise final from exc
                await asyncio.sleep(wait)
                backoff *= 2
                continue
            except EndpointError as exc:
                if attempt > 1:  # say that throttled attempts came first
                    exc.args = (f"{exc} (attempt {attempt}, after {attempt - 1} throttled)",)
                exc.attempts = attempt  # type: ignore[attr-defined]
                raise
            result.attempts = attempt
            if attempt > 1:  # latency counts from the first attempt
                result.t_start = t_first_start
            return result

    # Both run in a worker thread.

    def _converse(self, params: dict[str, Any], deadline: float) -> BedrockCompletion:
        assert self._stamps is not None
        self._stamps.reset()
        t_call = time.monotonic()
        try:
            resp = self._client.converse(**params)
            t_end = time.monotonic()
            t_start = self._stamps.last(t_call)
            content = resp["output"]["message"]["content"]
            text = "".join(block.get("text", "") for block in content if isinstance(block, dict))
            usage = resp.get("usage") or {}
        except Exception as exc:
            raise translate_client_error(exc, self._what) from exc
        if not text:
            raise EndpointProtocolError(f"{self._what}: answer carries no output text")
        return BedrockCompletion(
            t_start=t_start, t_end=t_end, t_first_token=t_end, chunk_times=[], text=text,
            input_tokens=usage.get("inputTokens"), output_tokens=usage.get("outputTokens"), http_status=200,
        )

    def _stream(self, params: dict[str, Any], deadline: float) -> BedrockCompletion:
        chunk_times: list[float] = []
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        stopped = False
        assert self._stamps is not None
        self._stamps.reset()
        t_call = time.monotonic()
        stream = None
        try:
            resp = self._client.converse_stream(**params)
            t_start = self._stamps.last(t_call)
            stream = resp["stream"]
            for event in stream:
                now = time.monotonic()
                if "contentBlockDelta" in event:
                    text = (event["contentBlockDelta"].get("delta") or {}).get("text")
                    if text:
                        chunk_times.append(now)
                        pieces.append(text)
                elif "messageStop" in event:
                    stopped = True
                elif "metadata" in event:
                    usage = event["metadata"].get("usage") or {}
                if now > deadline:
                    raise EndpointTimeout(f"{self._what}: stream exceeded the {self.inference.timeout_s:g} s timeout")
            t_end = time.monotonic()
        except Exception as exc:
            raise translate_client_error(exc, self._what) from exc
        finally:
            if stream is not None:
                stream.close()
        if not stopped:
            raise EndpointProtocolError(f"{self._what}: stream ended before messageStop")
        if not chunk_times:
            raise EndpointProtocolError(f"{self._what}: stream carried no output text")
        return BedrockCompletion(
            t_start=t_start, t_end=t_end, t_first_token=chunk_times[0], chunk_times=chunk_times,
            text="".join(pieces), input_tokens=usage.get("inputTokens"), output_tokens=usage.get("outputTokens"),
            http_status=200,
        )


def bedrock_client(endpoint: BedrockEndpoint, inference: InferenceConfig, url: str | None = None) -> BedrockClient:
    """The client of a Bedrock experiment (factory for `fmbench.endpoints.make_client`).

    Args:
        endpoint: the endpoint config.
        inference: generation parameters.
        url: optional override of the bedrock-runtime URL (else ``runtime_endpoint_url``).
    """
    return BedrockClient(
        endpoint.model_id,
        inference,
        region=endpoint.region,
        profile=endpoint.profile,
        runtime_endpoint_url=url or endpoint.runtime_endpoint_url,
        throttle_retries=endpoint.throttle_retries,
        throttle_backoff_s=endpoint.throttle_backoff_s,
    )
