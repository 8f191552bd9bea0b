"""The types datasets, endpoint clients and the load engine share: `Prompt`, `Completion`, `EndpointClient`.

The load engine consumes `EndpointClient`, so it owns the interface here, in a neutral module that
`fmbench.datasets` and `fmbench.endpoints` both import (neither imports the other for it); every
provider implements it, so the load engine is one engine for every provider.

A client sends one request and reports *when* things happened, stamped with
``time.monotonic()`` where the bytes arrive; the engine turns that into a `RequestRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: Request-body field with a prompt's reference answers, sent by fmbench's client to the simulated
#: endpoint's answer model only (never to a real server).
ANSWERS_FIELD = "fmbench_answers"


@dataclass(slots=True, frozen=True)
class Prompt:
    """A rendered prompt ready to send."""

    prompt_id: str
    text: str
    input_tokens: int  # counted with the experiment's tokenizer
    answers: tuple[str, ...] = ()  # the dataset's reference answers, for quality evaluation


@dataclass(slots=True)
class Completion:
    """What a client measured for one successful request (absolute monotonic seconds)."""

    t_start: float  # just before the request was written
    t_end: float  # the last byte of the answer arrived
    t_first_token: float | None = None  # the first chunk carrying output text arrived
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk carrying output
    text: str = ""
    input_tokens: int | None = None  # from the server's usage, when it reports it
    output_tokens: int | None = None  # from the server's usage, when it reports it
    # Of the prompt tokens, those the server served from its prompt cache, when it says (OpenAI's
    # usage.prompt_tokens_details.cached_tokens, llama.cpp's timings.cache_n): no prefill for them.
    cached_tokens: int | None = None
    http_status: int | None = 200
    resends: int = 0  # sends on a pooled connection the server had closed before reading them
    note: str | None = None  # what the record should say about an unusual but successful answer


@runtime_checkable
class EndpointClient(Protocol):
    """An async client for one endpoint; one instance serves a whole shard.

    ``complete`` raises a subclass of `fmbench.errors.EndpointError` on failure; its ``kind``
    becomes the record's ``error_kind``.

    A client may also have ``receive_stamps() -> dict[str, int] | None``: its connections since
    ``open`` by how the arrival of answers was stamped (see `fmbench.endpoints.openai.OpenAIClient`;
    the AWS SDK's clients count their requests, `fmbench.aws.BotoRuntimeClient`); the shard reports
    it (`fmbench.loadgen.engine.receive_stamps`).
    """

    async def open(self, concurrency: int) -> None:
        """Prepare connections for ``concurrency`` requests in flight."""

    async def complete(self, prompt: Prompt) -> Completion:
        """Send one request and measure it."""

    async def close(self) -> None:
        """Release connections."""
