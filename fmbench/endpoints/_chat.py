"""What an OpenAI-schema answer carries, read the same way by every client of that schema (the
OpenAI-compatible client, and SageMaker's ``messages`` and ``completions`` payloads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fmbench.errors import EndpointHTTPError, EndpointProtocolError, EndpointThrottled

__all__ = ["NO_TEXT", "count", "error_event", "is_error_event", "output_piece", "usage_counts"]

#: TGI's ``error_type`` of an error event and the HTTP status its server gives the same error.
_TGI_ERROR_STATUS = {"validation": 422, "overloaded": 429}

#: A record's note for an answer whose tokens the server counted but whose text never arrived: a
#: server may withhold bytes that do not yet form whole UTF-8 characters (llama.cpp does), so a short
#: answer of partial characters carries no text. The server did the work: a success, counted in its
#: own tokens.
NO_TEXT = "no output text arrived; output tokens as counted by the server"

#: The start of a record's note for an answer the server ended for its own limit before max_tokens
#: (``finish_reason: length`` with fewer output tokens: the prompt plus max_tokens exceed its
#: context). A success, but shorter than the benchmark asked for: its throughput is of shorter answers.
CUT_BY_SERVER = "cut short by the server"

#: A record's note for an answer to a streamed request that arrived whole (a server or proxy that
#: ignores ``stream``): a success, but its first token came with its last, so its TTFT is the whole
#: answer's time and it has no TPOT or inter-token times.
ANSWERED_WHOLE = "answered whole, not streamed"

#: The end reasons that say an answer ended for length: the OpenAI schema's and TGI's ``length``,
#: Bedrock's ``max_tokens``; and Bedrock's ``model_context_window_exceeded``, which says it ended
#: at the model's context whatever the count.
_FOR_LENGTH = frozenset({"length", "max_tokens"})
_AT_CONTEXT = "model_context_window_exceeded"


def finish_reason(*event_lists: Any) -> str | None:
    """The last ``finish_reason`` among parsed chunks or answers (each list read from its end), if any."""
    for events in event_lists:
        for event in reversed(events or ()):
            try:
                reason = event["choices"][0].get("finish_reason")
            except (KeyError, IndexError, TypeError, AttributeError):
                continue
            if reason:
                return str(reason)
    return None


def cut_note(reason: str | None, output_tokens: int | None, max_tokens: int | None,
             field: str = "finish_reason") -> str | None:
    """`CUT_BY_SERVER`'s note when the server ended the answer for length below ``max_tokens``, else None.

    Args:
        reason: the answer's end reason, as the server said it (`_FOR_LENGTH`, `_AT_CONTEXT`).
        field: where the server said it (``finish_reason``, TGI's ``details.finish_reason``, Bedrock's
            ``stopReason``), for the note.
    """
    at_context = reason == _AT_CONTEXT  # (said at the context's end: a cut even when the count is unknown)
    if not (at_context or reason in _FOR_LENGTH) or not max_tokens:
        return None
    if (output_tokens is None and not at_context) or (output_tokens is not None and output_tokens >= max_tokens):
        return None
    why = ("the model's own output limit is below max_tokens, or the prompt and max_tokens exceed its context"
           if reason == "max_tokens" else "the prompt and max_tokens exceed its context")
    at = f"at {output_tokens} of" if output_tokens is not None else "below"
    return f"{CUT_BY_SERVER} {at} max_tokens {max_tokens} output tokens ({field} {reason}: {why})"


def output_piece(event: Any, chat: bool) -> str | None:
    """The output text a parsed chunk or answer carries (None when it carries none): a chat delta's
    or message's content, else its reasoning (``reasoning_content``, ``reasoning``: a reasoning
    model's first tokens are output the endpoint generated, and its time to first token counts
    them); a completion's text.

    Raises:
        EndpointProtocolError: the answer is not shaped as the OpenAI API defines it (its choices are
            not a list of objects, or a text is not a string), said as such rather than as whatever
            Python error reading it would have raised.
    """
    try:
        choices = event.get("choices")
        if not choices:
            return None
        choice = choices[0]
        if chat:
            delta = choice.get("delta") or choice.get("message")
            if not delta:
                return None
            piece = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        else:
            piece = choice.get("text")
    except (AttributeError, KeyError, IndexError, TypeError) as exc:
        raise EndpointProtocolError(f"answer is not shaped as an OpenAI completion: {_shape(event)}") from exc
    if piece and not isinstance(piece, str):
        raise EndpointProtocolError(f"answer's output text is not a string: {type(piece).__name__}")
    return piece or None


def _shape(event: Any) -> str:
    """What is wrong with an answer's choices, for the error message (never its text)."""
    if not isinstance(event, dict):
        return f"a JSON {type(event).__name__}, not an object"
    choices = event.get("choices")
    if not isinstance(choices, list):
        return f"choices is a {type(choices).__name__}, not a list"
    first = choices[0]
    if not isinstance(first, dict):
        return f"choices[0] is {'null' if first is None else 'a ' + type(first).__name__}, not an object"
    return "its delta or message is not an object"


def count(usage: Any, key: str) -> int | None:
    """A token count from a usage object, or None when absent or not a non-negative integer (a
    server's odd count is not taken as a measurement)."""
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_counts(usage: Any, timings: Any = None) -> tuple[int | None, int | None]:
    """Prompt and output tokens from the OpenAI ``usage``, else output tokens from llama.cpp's
    ``timings`` (its ``prompt_n`` leaves out prompt tokens served from its cache, so it is not used)."""
    if isinstance(usage, dict):
        return count(usage, "prompt_tokens"), count(usage, "completion_tokens")
    if isinstance(timings, dict):
        return None, count(timings, "predicted_n")
    return None, None


def cached_count(usage: Any, timings: Any = None) -> int | None:
    """Prompt tokens the server served from its prompt cache: OpenAI's (and llama.cpp's, vLLM's with
    ``--enable-prompt-tokens-details``) ``usage.prompt_tokens_details.cached_tokens``, else llama.cpp's
    ``timings.cache_n``; None when the server does not say."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = count(details, "cached_tokens")
    return cached if cached is not None else count(timings, "cache_n")


def is_error_event(event: dict[str, Any]) -> bool:
    """Whether a parsed event or answer is the server's error: it names one (an ``error`` that is not
    null or empty), whatever else it carries. A server that writes every field of its schema sends
    ``"error": null`` beside good chunks; one that names an error beside a last piece of text failed
    the answer all the same."""
    return bool(event.get("error"))


def error_event(event: dict[str, Any], describe: Callable[[int], str]) -> EndpointHTTPError:
    """A server's own error event (OpenAI's ``{"error": {"message", "code"}}``, TGI's ``{"error": "...",
    "error_type": "..."}``) as the HTTP error it stands for: the answer was read, the server failed it.
    Its status is the event's code when that is an HTTP error status, else TGI's for its error type,
    else 500; 429 is throttling (retried as a throttled answer is). ``describe(status)`` words it."""
    err = event.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    status = code if isinstance(code, int) and 400 <= code <= 599 else _TGI_ERROR_STATUS.get(
        str(event.get("error_type")), 500)
    text = describe(status)
    return EndpointThrottled(text, status=429) if status == 429 else EndpointHTTPError(text, status=status)
