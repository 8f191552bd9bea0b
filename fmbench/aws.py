"""Shared AWS plumbing (boto3 sessions, a thread pool per shard, error mapping) for clients, deploy and preflight.

boto3 is synchronous. Each client runs its calls in a thread pool sized to the shard's
concurrency, with a botocore connection pool of the same size, so neither the pool nor urllib3
limits requests in flight. The EventStream is read in the worker thread and every event is
stamped with ``time.monotonic()`` there, the moment botocore hands it over (one HTTP chunk per
event on the wire), so the event loop's scheduling never shifts a timestamp.

`translate_client_error` is the one place botocore exceptions become `fmbench.errors`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.eventstream
import botocore.exceptions
import botocore.parsers
import urllib3.exceptions

from fmbench.errors import (
    NO_ANSWER_BYTE,
    EndpointConnectionError,
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
    answer_cut_off,
)
from fmbench.rxstamp import SDK_THREAD

T = TypeVar("T")

#: Error codes AWS runtimes use to refuse a request for rate or quota.
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ServiceQuotaExceededException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
    }
)


#: Worker threads and pooled connections when a shard sets no concurrency cap (open loop).
UNCAPPED_CONCURRENCY = 256


def pool_size(concurrency: int) -> int:
    """Threads/connections for ``concurrency`` requests in flight (0 or less: uncapped)."""
    return concurrency if concurrency > 0 else UNCAPPED_CONCURRENCY


# Stream exception events carry no HTTP status; these are the service's or the model's fault.
_SERVER_SIDE_STREAM_CODES = frozenset(
    {
        "ModelStreamError",
        "InternalStreamFailure",
        "InternalServerException",
        "ModelStreamErrorException",
        "ServiceUnavailableException",
    }
)


def make_session(region: str | None, profile: str | None) -> boto3.Session:
    """A boto3 session from the standard chain, with an optional profile and region.

    Raises:
        botocore.exceptions.ProfileNotFound: the profile does not exist (callers translate it).
    """
    return boto3.Session(profile_name=profile, region_name=region)


def profile_not_found(profile: str | None, where: str | None = None) -> str:
    """The one line for an AWS profile that does not exist: the one given (``where.profile``), or
    else the one botocore took from the environment (AWS_DEFAULT_PROFILE, then AWS_PROFILE), named
    with its variable, since no config field or option holds it.
    """
    if profile is None:
        for var in ("AWS_DEFAULT_PROFILE", "AWS_PROFILE"):  # botocore's order
            if os.environ.get(var):
                return (f"{where + ': ' if where else ''}AWS profile {os.environ[var]!r} (from the environment "
                        f"variable {var}) not found in the AWS config files; set {var} to an existing profile "
                        "or unset it")
    return f"{where + '.profile: ' if where else ''}AWS profile {profile!r} not found in the AWS config files"


def client_config(concurrency: int, timeout_s: float) -> botocore.config.Config:
    """A botocore config for runtime calls: no retries (each attempt is recorded), no pool cap."""
    return botocore.config.Config(
        max_pool_connections=pool_size(concurrency),
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=min(timeout_s, 60.0),
        read_timeout=timeout_s,
        tcp_keepalive=True,
    )


#: Signing material AWS may echo in an error (InvalidSignatureException quotes the canonical request,
#: session token included): the value after these names never reaches a message.
_SIGNING = re.compile(r"(?i)(x-amz-security-token\s*[:=]\s*|signature\s*=\s*)[^\s'\",&;]+")


#: Credential values shorter than this are not real AWS credentials (a key id has 20 characters, a
#: secret key 40, a session token hundreds) but test or placeholder values: replacing them everywhere
#: would only mangle the message ("s" in every word).
_MIN_SECRET = 12


def redact_aws(text: str, secrets: tuple[str, ...] = (), min_len: int = _MIN_SECRET) -> str:
    """``text`` without AWS signing material (`_SIGNING`) or any of ``secrets`` (the credentials'
    values) of at least ``min_len`` characters (1: every one, for secrets other than credentials),
    the longest first (a secret inside another is not left half-replaced)."""
    text = _SIGNING.sub(r"\1***", text)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= max(1, min_len):
            text = text.replace(secret, "***")
    return text


def session_secrets(session: boto3.Session) -> tuple[str, ...]:
    """The values of a session's credentials (key id, secret key, session token) that messages must
    not carry; empty when it has none."""
    try:
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
    except Exception:  # noqa: BLE001 - no credentials is the call's own error, said there
        return ()
    if frozen is None:
        return ()
    return tuple(v for v in (frozen.token, frozen.secret_key, frozen.access_key) if v)


def translate_client_error(exc: Exception, what: str, secrets: tuple[str, ...] = ()) -> EndpointError:
    """Map a botocore/urllib3 exception raised by a runtime call to an `EndpointError`.

    ``what`` names the call (e.g. ``sagemaker endpoint my-ep``) for the message. The message never
    carries AWS signing material nor ``secrets`` (`redact_aws`): it is stored in the run's records.
    """
    err = _translate(exc, what)
    if err is not exc:
        err.args = (redact_aws(str(err), secrets),)
    return err


def _retry_after(value: Any) -> float | None:
    """Seconds from a Retry-After header in delta-seconds (AWS sends no HTTP-date), None otherwise."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


_SOCKET_TIMEOUTS = (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError,
                    urllib3.exceptions.TimeoutError, TimeoutError)


def _translate(exc: Exception, what: str) -> EndpointError:
    if isinstance(exc, EndpointError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):  # includes EventStreamError
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "")) or "Unknown"
        # Exceptions inside an event stream use the member name (throttlingException).
        code = code[0].upper() + code[1:]
        message = str(err.get("Message", "")) or str(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in THROTTLING_CODES or status == 429:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
            return EndpointThrottled(f"{what}: {code}: {message}", status=429 if status in (None, 200) else status,
                                     retry_after_s=_retry_after(headers.get("retry-after")))
        if code == "ModelTimeoutException":  # Bedrock: the model did not answer in the service's time
            return EndpointTimeout(f"{what}: {code}: {message}")
        if code in ("ModelError", "ModelErrorException"):  # SageMaker's, Bedrock's: the model's own status
            original = exc.response.get("OriginalStatusCode") or exc.response.get("originalStatusCode")
            if str(original) == "429":  # the container throttled (SageMaker wraps its answer in a 424)
                return EndpointThrottled(f"{what}: {code} (container answered 429): {message}", status=429)
            return EndpointHTTPError(
                f"{what}: {code} (container answered {original}): {message}",
                status=int(original) if original else status,
            )
        if status in (None, 200):  # error event inside a stream
            status = 500 if code in _SERVER_SIDE_STREAM_CODES else 400
        return EndpointHTTPError(f"{what}: {code}: {message}", status=status)
    if isinstance(exc, _SOCKET_TIMEOUTS):
        return EndpointTimeout(f"{what}: timed out ({exc.__class__.__name__})")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return EndpointConnectionError(f"{what}: no AWS credentials found in the standard chain")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return EndpointHTTPError(f"{what}: invalid request: {exc}", status=None)
    if isinstance(exc, (botocore.parsers.ResponseParserError, botocore.eventstream.ParserError)):
        return EndpointProtocolError(f"{what}: unparseable answer: {exc}")
    if isinstance(
        exc,
        (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ResponseStreamingError,
            botocore.exceptions.HTTPClientError,
            urllib3.exceptions.HTTPError,
            ConnectionError,
        ),
    ):
        return EndpointConnectionError(f"{what}: connection failed ({exc.__class__.__name__}: {exc})")
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError, IndexError)):
        # (an answer of an unexpected shape: a list or a string where an object belongs)
        return EndpointProtocolError(f"{what}: unparseable answer ({exc.__class__.__name__}: {exc})")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return EndpointConnectionError(f"{what}: {exc.__class__.__name__}: {exc}")
    return EndpointError(f"{what}: {exc.__class__.__name__}: {exc}")


def translate_answer_error(exc: Exception, what: str, secrets: tuple[str, ...], begun: bool) -> EndpointError:
    """`translate_client_error`, where a connection that breaks once the answer has begun (its status and
    headers read) is the endpoint cutting the answer off (`fmbench.errors.answer_cut_off`)."""
    err = translate_client_error(exc, what, secrets)
    if not begun and isinstance(err, EndpointTimeout) and isinstance(exc, _SOCKET_TIMEOUTS):
        # no status line, no header: the endpoint said nothing (`fmbench.errors.silent_timeout`)
        err = EndpointTimeout(f"{err}, {NO_ANSWER_BYTE}")
    return answer_cut_off(err, begun, what)


def translate_call_error(exc: Exception, what: str, secrets: tuple[str, ...]) -> EndpointError:
    """`translate_answer_error` for a call that reads its whole answer before it returns (Bedrock's
    Converse): botocore reads the status, the headers and then the body inside one call and wraps the
    errors of both alike, so whether the answer had begun is whether the failure came from reading
    the body (`_in_body_read`)."""
    return translate_answer_error(exc, what, secrets, _in_body_read(exc))


def _in_body_read(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) was raised while urllib3 read a response's body, after its
    status and headers had arrived."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None:
            if tb.tb_frame.f_globals.get("__name__") == "urllib3.response":
                return True
            tb = tb.tb_next
        wrapped = getattr(err, "kwargs", {}).get("error") if isinstance(err, botocore.exceptions.BotoCoreError) else None
        todo.extend([err.__cause__, err.__context__, wrapped if isinstance(wrapped, BaseException) else None])
    return False


def bound_reads(body: Any, deadline: float, what: str, timeout_s: float) -> None:
    """Bound the next socket reads of a response ``body`` (a botocore event stream or streaming body)
    to the time left before the request's ``deadline``: botocore's read timeout is per read, so a
    stream that stalls after a part would otherwise fail a whole read timeout after it, up to twice
    the request's timeout. Call it when the body arrives and after each part; `restore_reads` after.

    Raises:
        EndpointTimeout: no time is left.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise EndpointTimeout(f"{what}: no complete answer within the {timeout_s:g} s timeout")
    sock = _socket_of(body)
    if sock is not None:
        sock.settimeout(left)


def restore_reads(body: Any, timeout_s: float) -> None:
    """Give the body's connection back its per-read timeout (it returns to the pool for other requests)."""
    sock = _socket_of(body)
    if sock is not None:
        try:
            sock.settimeout(timeout_s)
        except OSError:  # closed meanwhile: nothing to give back
            pass


def _socket_of(body: Any) -> Any:
    """The socket under a botocore body: its urllib3 response's connection's (None when not reachable)."""
    raw = getattr(body, "_raw_stream", None)
    return getattr(getattr(raw, "connection", None), "sock", None)


class SendStamps:
    """Stamps ``time.monotonic()`` when botocore is about to write each request (``before-send``).

    Serializing and signing a request costs boto3 a millisecond or more of CPU; stamping at
    ``before-send`` puts ``t_start`` where the OpenAI client puts it, just before the write, and
    leaves that client-side cost in the engine's send lag. One worker thread runs one request
    at a time, so a thread-local slot is enough.
    """

    def __init__(self, client: Any) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.sent = 0  # requests botocore wrote (every attempt), for `BotoRuntimeClient.receive_stamps`
        client.meta.events.register("before-send", self._on_send)

    def _on_send(self, **kwargs: Any) -> None:
        self._local.t = time.monotonic()
        with self._lock:
            self.sent += 1

    def reset(self) -> None:
        """Forget the last stamp of this thread (call before each request)."""
        self._local.t = None

    def last(self, default: float) -> float:
        """This thread's last stamp, or ``default`` if the request never reached the socket."""
        t = getattr(self._local, "t", None)
        return default if t is None else t


class ThreadRunner:
    """Runs blocking boto3 calls for one shard, one worker thread per request in flight."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def open(self, concurrency: int) -> None:
        """Start a pool of ``concurrency`` workers, 0 meaning uncapped (replaces any previous pool)."""
        self.close()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size(concurrency), thread_name_prefix="fmbench-boto"
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the pool and await its result."""
        if self._pool is None:
            raise EndpointError("client used before open()")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop the pool; running calls finish in the background."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class BotoRuntimeClient:
    """The lifecycle shared by the boto3-based endpoint clients: one runtime client with a
    connection pool and a thread pool sized to the concurrency, and send stamps.

    Subclasses set ``service`` (the boto3 service name) and implement ``complete``.
    """

    service = ""

    def __init__(self, what: str, inference: Any, region: str | None, profile: str | None,
                 runtime_endpoint_url: str | None) -> None:
        self.inference = inference
        self.region = region
        self.profile = profile
        self.runtime_endpoint_url = runtime_endpoint_url
        self._client: Any = None
        self._stamps: SendStamps | None = None
        self._runner = ThreadRunner()
        self._what = what
        self._secrets: tuple[str, ...] = ()  # the credentials' values, kept out of error messages

    async def open(self, concurrency: int) -> None:
        """Create the boto3 client and a thread pool for ``concurrency`` requests in flight."""
        try:
            session = make_session(self.region, self.profile)
            self._secrets = session_secrets(session)
            self._client = session.client(
                self.service,
                region_name=self.region or session.region_name,
                endpoint_url=self.runtime_endpoint_url,
                config=client_config(concurrency, self.inference.timeout_s),
            )
        except Exception as exc:
            raise translate_client_error(exc, self._what, self._secrets) from exc
        self._stamps = SendStamps(self._client)
        self._runner.open(concurrency)

    def receive_stamps(self) -> dict[str, int] | None:
        """How the arrival of answers was stamped (see `fmbench.protocol.EndpointClient`): always in the
        request's own thread, when botocore handed over each part (``sdk_thread``), counted per request
        sent since `open`; None when none was sent."""
        sent = self._stamps.sent if self._stamps is not None else 0
        return {SDK_THREAD: sent} if sent else None

    async def close(self) -> None:
        """Stop the thread pool."""
        self._runner.close()
