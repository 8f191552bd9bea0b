"""An `EndpointClient` for SageMaker real-time endpoints (InvokeEndpoint and its response stream).

Request formats (``SageMakerEndpoint.payload``):

* ``tgi``: ``{"inputs", "parameters": {max_new_tokens, temperature, top_p, details}, "stream"}``
  (TGI and LMI containers); streamed as ``data:{"token": {"text": ...}}`` lines (TGI's SSE, or
  LMI's JSON lines without ``data:``), the last one carrying ``generated_text``/``details``.
* ``messages``: the OpenAI chat schema (LMI, vLLM, TGI messages API); streamed as SSE frames.
* ``completions``: the OpenAI completions schema; streamed as SSE frames.

Streamed frames arrive inside ``PayloadPart`` events whose boundaries do not follow lines, so the
bytes are reassembled into lines across parts. Each part that completes at least one line
carrying output text is one chunk, stamped with ``time.monotonic()`` when botocore handed the
part over (``t_first_token`` is the first such stamp), exactly as the OpenAI client stamps reads.
Without streaming ``t_first_token`` equals ``t_end``. The OpenAI-schema payloads are read as the
OpenAI client reads them (`fmbench.endpoints._chat`): a reasoning model's reasoning is output (its
first token is the first token). With every payload, an answer whose server counted output tokens
(usage, TGI's ``details.generated_tokens``) but which carried no text is a success with a note (the
server did the work: an answer of end-of-sequence only), not a failure. An answer the server ended
for length below max_tokens (its context is full) is noted as cut (`_chat.cut_note`), from its
``finish_reason`` or TGI's ``details.finish_reason``.

Why boto3 in threads rather than aiobotocore: boto3 is what users run; each call runs in a pool
of ``concurrency`` threads with a botocore connection pool of the same size and retries disabled
(every attempt is recorded by the engine), and events are stamped in the worker thread as
botocore hands them over, so the event loop never delays a stamp. ``t_start`` is stamped at
botocore's ``before-send``, after serialization and signing (see `fmbench.aws`). Against the
simulated endpoint both add about the same to the model's TTFT and aiobotocore saves a little CPU
per request, which matters only far beyond the concurrency one SageMaker endpoint sustains, so
boto3 it is (benchmarks/results/README.md, "Why boto3 in threads").
"""

from __future__ import annotations

import json
import time
from typing import Any

from fmbench.aws import (
    BotoRuntimeClient,
    bound_reads,
    restore_reads,
    translate_answer_error,
)
from fmbench.config import InferenceConfig, SageMakerEndpoint
from fmbench.endpoints._chat import (
    NO_TEXT,
    cached_count,
    count,
    cut_note,
    error_event,
    finish_reason,
    is_error_event,
    output_piece,
    usage_counts,
)
from fmbench.errors import (
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointTimeout,
)
from fmbench.protocol import Completion, Prompt

__all__ = ["SageMakerClient", "sagemaker_client"]


def _stream_error(event: dict[str, Any], what: str, where: str = "stream") -> EndpointHTTPError:
    """The server's own error event inside a stream (or its whole answer), as the OpenAI client reads
    it (`_chat.error_event`)."""
    err = event["error"]
    message = (err.get("message") or err) if isinstance(err, dict) else err
    return error_event(event, lambda status: f"{what}: error in {where} (status {status}): {str(message)[:200]}")


class _LineParser:
    """Reassembles streamed bytes into lines and extracts output text, usage and the end marker."""

    def __init__(self, payload: str, what: str = "sagemaker") -> None:
        self.payload = payload
        self.what = what
        self._buf = b""
        self.done = False  # [DONE] (SSE) or the final TGI event was seen
        self.output_tokens: int | None = None
        self.input_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.finish_reason: str | None = None  # (the answer's end reason, once a frame said it)

    def feed(self, data: bytes) -> str:
        """Add bytes; return the output text of every line they completed."""
        self._buf += data
        if b"\n" not in self._buf:
            return ""
        *lines, self._buf = self._buf.split(b"\n")
        return "".join(self._line(line) for line in lines)

    def finish(self) -> str:
        """Parse a last line left without a newline."""
        rest, self._buf = self._buf, b""
        return self._line(rest)

    def _line(self, raw: bytes) -> str:
        line = raw.strip()
        if not line or line.startswith((b":", b"event:", b"id:")):
            return ""
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if line == b"[DONE]":
            self.done = True
            return ""
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise EndpointProtocolError(f"{self.what}: streamed line is not JSON: {line[:80]!r}") from exc
        if not isinstance(event, dict):
            raise EndpointProtocolError(f"{self.what}: streamed line is not a JSON object: {line[:80]!r}")
        if is_error_event(event):
            raise _stream_error(event, self.what)
        if self.payload == "tgi":
            return self._tgi(event)
        return self._openai(event)

    def _tgi(self, event: dict[str, Any]) -> str:
        details = event.get("details")
        if event.get("generated_text") is not None or details:
            self.done = True
            if count(details, "generated_tokens") is not None:
                self.output_tokens = count(details, "generated_tokens")
            self.finish_reason = _tgi_reason(details) or self.finish_reason
        token = event.get("token")
        if isinstance(token, dict) and not token.get("special"):
            return str(token.get("text") or "")
        return ""

    def _openai(self, event: dict[str, Any]) -> str:
        usage = event.get("usage")
        if isinstance(usage, dict):
            n_in, n_out = usage_counts(usage)
            self.output_tokens = n_out if n_out is not None else self.output_tokens
            self.input_tokens = n_in if n_in is not None else self.input_tokens
            cached = cached_count(usage)
            self.cached_tokens = cached if cached is not None else self.cached_tokens
        self.finish_reason = finish_reason([event]) or self.finish_reason
        piece = output_piece(event, self.payload == "messages")
        return str(piece) if piece else ""

    def note(self, text_arrived: bool, max_tokens: int) -> str | None:
        """The answer's note: `NO_TEXT` when no text arrived, else a cut answer's, else None."""
        if not text_arrived:
            return NO_TEXT
        return cut_note(self.finish_reason, self.output_tokens, max_tokens, _reason_field(self.payload))


def _tgi_reason(details: Any) -> str | None:
    reason = details.get("finish_reason") if isinstance(details, dict) else None
    return str(reason) if reason else None


def _reason_field(payload: str) -> str:
    return "details.finish_reason" if payload == "tgi" else "finish_reason"


class SageMakerClient(BotoRuntimeClient):
    """Sends prompts to one SageMaker endpoint and measures each request.

    Args:
        endpoint_name: the endpoint to invoke.
        inference: generation parameters, streaming flag and per-request timeout.
        payload: request format, ``tgi``, ``messages`` or ``completions``.
        region, profile: AWS access (standard chain when None).
        runtime_endpoint_url: override of the sagemaker-runtime URL (a local test server).
    """

    service = "sagemaker-runtime"

    def __init__(
        self,
        endpoint_name: str,
        inference: InferenceConfig,
        payload: str = "tgi",
        region: str | None = None,
        profile: str | None = None,
        runtime_endpoint_url: str | None = None,
    ) -> None:
        if payload not in ("tgi", "messages", "completions"):
            raise EndpointError(f"sagemaker: unknown payload format {payload!r}")
        super().__init__(f"sagemaker endpoint {endpoint_name}", inference, region, profile, runtime_endpoint_url)
        self.endpoint_name = endpoint_name
        self.payload = payload

    def body(self, prompt: Prompt) -> bytes:
        """The request body for ``prompt`` in this client's payload format."""
        inf = self.inference
        body: dict[str, Any]
        if self.payload == "tgi":
            params: dict[str, Any] = {"max_new_tokens": inf.max_tokens, "details": True}
            if inf.temperature > 0:
                params["temperature"] = inf.temperature
                params["do_sample"] = True
            else:  # TGI rejects temperature 0; greedy decoding is the same thing
                params["do_sample"] = False
            if inf.top_p is not None and inf.top_p < 1:
                params["top_p"] = inf.top_p
            body = {"inputs": prompt.text, "parameters": params, "stream": inf.stream}
        else:
            body = {"max_tokens": inf.max_tokens, "temperature": inf.temperature, "stream": inf.stream}
            if inf.top_p is not None:
                body["top_p"] = inf.top_p
            if self.payload == "messages":
                body["messages"] = [{"role": "user", "content": prompt.text}]
            else:
                body["prompt"] = prompt.text
            if inf.stream:
                body["stream_options"] = {"include_usage": True}
        body.update(inf.extra_body)
        return json.dumps(body).encode()

    async def complete(self, prompt: Prompt) -> Completion:
        """Invoke the endpoint once and measure it.

        Raises:
            EndpointThrottled: ThrottlingException (or any 429).
            EndpointHTTPError: ModelError (status = the container's status), validation errors.
            EndpointTimeout, EndpointConnectionError, EndpointProtocolError: see `fmbench.aws`.
        """
        if self._client is None:
            raise EndpointError("sagemaker client used before open()")
        body = self.body(prompt)
        call = self._stream if self.inference.stream else self._invoke
        return await self._runner.run(call, body)

    # Both run in a worker thread.

    def _invoke(self, body: bytes) -> Completion:
        assert self._stamps is not None
        self._stamps.reset()
        t_call = time.monotonic()
        timeout = self.inference.timeout_s
        answer = None
        read = False
        try:
            resp = self._client.invoke_endpoint(
                EndpointName=self.endpoint_name, Body=body, ContentType="application/json", Accept="application/json"
            )
            answer = resp["Body"]  # (the answer has begun: its status and headers are read)
            bound_reads(answer, t_call + timeout, self._what, timeout)
            raw = answer.read()
            read = True
            t_end = time.monotonic()
            t_start = self._stamps.last(t_call)
            return self._parse_full(raw, t_start, t_end)
        except Exception as exc:
            raise translate_answer_error(exc, self._what, self._secrets, answer is not None) from exc
        finally:
            if answer is not None:
                restore_reads(answer, timeout)
                if not read:  # a body left unread (past its deadline, or broken off) must not go back to the pool
                    answer.close()

    def _parse_full(self, raw: bytes, t_start: float, t_end: float) -> Completion:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise EndpointProtocolError(f"{self._what}: answer is not JSON: {raw[:80]!r}") from exc
        if isinstance(data, dict) and is_error_event(data):  # the container answered its own error
            raise _stream_error(data, self._what, "answer")
        text: Any = ""
        n_in, n_out, cached = None, None, None
        if self.payload == "tgi":
            item = data[0] if isinstance(data, list) and data else data
            if not isinstance(item, dict) or not isinstance(item.get("generated_text"), str):
                raise EndpointProtocolError(f"{self._what}: TGI answer without generated_text: {raw[:80]!r}")
            text = item["generated_text"]
            n_out = count(item.get("details"), "generated_tokens")
            reason = _tgi_reason(item.get("details"))
        else:
            if not isinstance(data, dict) or not data.get("choices"):
                raise EndpointProtocolError(f"{self._what}: answer without choices: {raw[:80]!r}")
            text = output_piece(data, self.payload == "messages") or ""
            n_in, n_out = usage_counts(data.get("usage"))
            cached = cached_count(data.get("usage"))
            reason = finish_reason([data])
        if not text and not n_out:
            raise EndpointProtocolError(f"{self._what}: answer carries no output text")
        return Completion(
            t_start=t_start, t_end=t_end, t_first_token=t_end, chunk_times=[], text=str(text),
            input_tokens=n_in, output_tokens=n_out, cached_tokens=cached, http_status=200,
            note=cut_note(reason, n_out, self.inference.max_tokens, _reason_field(self.payload)) if text else NO_TEXT,
        )

    def _stream(self, body: bytes) -> Completion:
        parser = _LineParser(self.payload, self._what)
        chunk_times: list[float] = []
        pieces: list[str] = []
        assert self._stamps is not None
        self._stamps.reset()
        t_call = time.monotonic()
        deadline = t_call + self.inference.timeout_s
        stream = None
        try:
            resp = self._client.invoke_endpoint_with_response_stream(
                EndpointName=self.endpoint_name, Body=body, ContentType="application/json", Accept="*/*"
            )
            t_start = self._stamps.last(t_call)
            stream = resp["Body"]
            timeout = self.inference.timeout_s
            bound_reads(stream, deadline, self._what, timeout)
            for event in stream:
                now = time.monotonic()
                part = event.get("PayloadPart")
                if part is not None:
                    text = parser.feed(part.get("Bytes", b""))
                    if text:
                        chunk_times.append(now)
                        pieces.append(text)
                if now > deadline:
                    raise EndpointTimeout(f"{self._what}: stream exceeded the {timeout:g} s timeout")
                bound_reads(stream, deadline, self._what, timeout)  # the next part: within what is left
            now = time.monotonic()
            tail = parser.finish()
            if tail:
                chunk_times.append(now)
                pieces.append(tail)
        except Exception as exc:
            raise translate_answer_error(exc, self._what, self._secrets, stream is not None) from exc
        finally:
            if stream is not None:
                restore_reads(stream, self.inference.timeout_s)
                stream.close()
        if not parser.done:
            raise EndpointProtocolError(f"{self._what}: stream ended before its final event")
        if not chunk_times and not parser.output_tokens:
            raise EndpointProtocolError(f"{self._what}: stream carried no output text")
        return Completion(
            t_start=t_start, t_end=now, t_first_token=chunk_times[0] if chunk_times else None,
            chunk_times=chunk_times, text="".join(pieces), input_tokens=parser.input_tokens,
            output_tokens=parser.output_tokens, cached_tokens=parser.cached_tokens, http_status=200,
            note=parser.note(bool(chunk_times), self.inference.max_tokens),
        )


def sagemaker_client(endpoint: SageMakerEndpoint, inference: InferenceConfig, url: str | None = None) -> SageMakerClient:
    """The client of a SageMaker experiment (factory for `fmbench.endpoints.make_client`).

    Args:
        endpoint: the endpoint config; ``endpoint_name`` must be set (the deployed name).
        inference: generation parameters.
        url: optional override of the sagemaker-runtime URL (else ``runtime_endpoint_url``).

    Raises:
        EndpointError: no endpoint name.
    """
    if not endpoint.endpoint_name:
        raise EndpointError("sagemaker: no endpoint name (deploy first and pass the deployed name)")
    return SageMakerClient(
        endpoint.endpoint_name,
        inference,
        payload=endpoint.payload,
        region=endpoint.region,
        profile=endpoint.profile,
        runtime_endpoint_url=url or endpoint.runtime_endpoint_url,
    )
