"""An `EndpointClient` for Amazon Bedrock models through the Converse and ConverseStream APIs.

``modelId`` may be a model id (``meta.llama3-8b-instruct-v1:0``), a cross-region inference
profile (``us.anthropic.claude-3-5-sonnet-20240620-v1:0``) or a provisioned-throughput ARN; the
API takes all three the same way. Token counts come from the API's ``usage`` (response, or the
stream's ``metadata`` event). An answer that stopped for length below ``maxTokens``, or at the model's
context window (``stopReason``), is noted as cut (`fmbench.endpoints._chat.cut_note`). Streaming is timed like the other clients: each
``contentBlockDelta`` carrying text is stamped with ``time.monotonic()`` in the worker thread as
botocore hands it over (see `fmbench.aws` for the thread-pool design).

Throttling (``ThrottlingException``, ``ServiceQuotaExceededException``, any 429) raises
`EndpointThrottled`. The client sends each request once; retrying throttled requests is the load
engine's job (`fmbench.loadgen.retry`, ``throttle_retries`` of the experiment's Bedrock endpoint),
so every throttled attempt is a record of its own and the request's latency counts from its
scheduled time, including the time lost to throttling.
"""

from __future__ import annotations

import time
from typing import Any

from fmbench.aws import (
    BotoRuntimeClient,
    bound_reads,
    restore_reads,
    translate_answer_error,
    translate_call_error,
)
from fmbench.config import BedrockEndpoint, InferenceConfig
from fmbench.endpoints._chat import count, cut_note
from fmbench.errors import EndpointError, EndpointProtocolError, EndpointTimeout
from fmbench.protocol import Completion, Prompt

__all__ = ["BedrockClient", "bedrock_client"]


class BedrockClient(BotoRuntimeClient):
    """Sends prompts to one Bedrock model and measures each request.

    Args:
        model_id: model id, inference profile id/ARN or provisioned-throughput ARN.
        inference: generation parameters, streaming flag and per-request timeout.
        region, profile: AWS access (standard chain when None).
        runtime_endpoint_url: override of the bedrock-runtime URL (a local test server).
    """

    service = "bedrock-runtime"

    def __init__(
        self,
        model_id: str,
        inference: InferenceConfig,
        region: str | None = None,
        profile: str | None = None,
        runtime_endpoint_url: str | None = None,
    ) -> None:
        super().__init__(f"bedrock model {model_id}", inference, region, profile, runtime_endpoint_url)
        self.model_id = model_id

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

    async def complete(self, prompt: Prompt) -> Completion:
        """Send one request and measure it.

        Raises:
            EndpointThrottled: the request was throttled (the engine may retry it).
            EndpointHTTPError, EndpointTimeout, EndpointConnectionError, EndpointProtocolError:
                any other failure.
        """
        if self._client is None:
            raise EndpointError("bedrock client used before open()")
        params = self.request(prompt)
        call = self._stream if self.inference.stream else self._converse
        deadline = time.monotonic() + self.inference.timeout_s
        result: Completion = await self._runner.run(call, params, deadline)
        return result

    # Both run in a worker thread.

    def _converse(self, params: dict[str, Any], deadline: float) -> Completion:
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
            stop = resp.get("stopReason")
        except Exception as exc:
            raise translate_call_error(exc, self._what, self._secrets) from exc
        if not text:
            raise EndpointProtocolError(f"{self._what}: answer carries no output text")
        return self._completion(t_start, t_end, t_end, [], text, usage, stop)

    def _completion(self, t_start: float, t_end: float, t_first: float, chunk_times: list[float], text: str,
                    usage: dict[str, Any], stop: Any) -> Completion:
        n_out = count(usage, "outputTokens")
        return Completion(
            t_start=t_start, t_end=t_end, t_first_token=t_first, chunk_times=chunk_times, text=text,
            input_tokens=count(usage, "inputTokens"), output_tokens=n_out, http_status=200,
            note=cut_note(str(stop) if stop else None, n_out, self.inference.max_tokens, "stopReason"),
        )

    def _stream(self, params: dict[str, Any], deadline: float) -> Completion:
        chunk_times: list[float] = []
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        stopped, stop = False, None
        assert self._stamps is not None
        self._stamps.reset()
        t_call = time.monotonic()
        stream = None
        try:
            resp = self._client.converse_stream(**params)
            t_start = self._stamps.last(t_call)
            stream = resp["stream"]
            timeout = self.inference.timeout_s
            bound_reads(stream, deadline, self._what, timeout)
            for event in stream:
                now = time.monotonic()
                if "contentBlockDelta" in event:
                    text = (event["contentBlockDelta"].get("delta") or {}).get("text")
                    if text:
                        chunk_times.append(now)
                        pieces.append(text)
                elif "messageStop" in event:
                    stopped, stop = True, (event["messageStop"] or {}).get("stopReason")
                elif "metadata" in event:
                    usage = event["metadata"].get("usage") or {}
                if now > deadline:
                    raise EndpointTimeout(f"{self._what}: stream exceeded the {timeout:g} s timeout")
                bound_reads(stream, deadline, self._what, timeout)  # the next event: within what is left
            t_end = time.monotonic()
        except Exception as exc:
            raise translate_answer_error(exc, self._what, self._secrets, stream is not None) from exc
        finally:
            if stream is not None:
                restore_reads(stream, self.inference.timeout_s)
                stream.close()
        if not stopped:
            raise EndpointProtocolError(f"{self._what}: stream ended before messageStop")
        if not chunk_times:
            raise EndpointProtocolError(f"{self._what}: stream carried no output text")
        return self._completion(t_start, t_end, chunk_times[0], chunk_times, "".join(pieces), usage, stop)


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
    )
