"""An `EndpointClient` for OpenAI-compatible servers (/v1/chat/completions and /v1/completions).

One shared aiohttp session per shard, with a keep-alive connection pool at least as large as the
concurrency, so no request ever waits for a connection the engine did not ask for. Streaming
answers are parsed incrementally straight off the socket reads (`_SSEDecoder`): each read is
split once at its newlines and never re-scanned, events split across reads and several events in
one read are both handled, and each chunk carrying output text is stamped with the time of the
socket read that delivered it.

Timing contract (absolute ``time.monotonic()`` seconds, see `fmbench.protocol.Completion`):
``t_start`` just before the request's first bytes are handed to the kernel (each connection's
transport stamps the first write of the request in flight, `_SendStampingHandler`); aiohttp's own
preparation of a request before that is the client's time, not the endpoint's, and is not
counted (its size: benchmarks/results/README.md, "Client overhead"). Where no
stamp is available (a transport that cannot be wrapped) ``t_start`` falls back to just before the
request is handed to the session. ``t_first_token`` at the socket read
holding the first chunk with output text (role-only and usage-only chunks do not count);
``chunk_times`` one stamp per chunk with output text; ``t_end`` at ``[DONE]`` (or the last read of a
non-streamed body). Without streaming there is no first-token event, so ``t_first_token`` equals
``t_end`` and ``chunk_times`` is empty.

A read's stamp is when its bytes reached the socket, by the kernel's clock (``SO_TIMESTAMPNS``,
`fmbench.rxstamp`): a client whose event loop is busy with other requests' answers, or whose
process is not scheduled at that moment, still measures when the endpoint's bytes arrived, not when
it got to them. A read returns every byte that waited, and its stamp is when the last of them
arrived: answers that queue unread are stamped late, never early. Over TLS it is the encrypted
read's stamp (what it completed is decrypted and handed on within that read). Where the kernel gives
no stamp (not Linux, or a transport without a plain socket inside, such as uvloop's), the stamp is
taken as the connection's protocol receives the bytes, before the reading task wakes; the client
counts its connections by which (`OpenAIClient.receive_stamps`) and the report says so per shard.

Why aiohttp: ``benchmarks/http_client_choice.py`` measured httpx at over twice aiohttp's latency
at concurrency 1 and many times its CPU per request at concurrency 32; this client's extra CPU over
a bare aiohttp loop is the parsing (JSON per chunk, SSE framing, usage), flat per chunk with answer
length (no quadratic buffers). The numbers: benchmarks/results/README.md, "Why aiohttp".

Connections the server closes. Real servers and proxies close keep-alive connections (llama.cpp
after its ``Keep-Alive: max``, and unannounced after streamed answers; nginx's
``keepalive_requests``/``keepalive_timeout``; load balancers' idle timeouts). A pooled connection is
not reused past the server's ``Connection: close`` or ``Keep-Alive`` limits, nor once its idle
socket shows the peer closed it. What is left is a race: the request goes out on a connection the
server is closing. When that fails on a connection that had carried earlier requests and no byte of
an answer came back (or nothing of the request was written at all), the server never read it, and
it is sent again at once on another connection; its timing starts at the send that was answered
and the resend is counted (``Completion.resends``, the records' ``resends``), a client event, not an
endpoint error. A failure to connect, a timeout, a failure on a new connection and anything after
the first answer byte stay endpoint errors, so a server that crashes on a request shows as such.

A stream may end with the server's usage counting output tokens and no text at all (llama.cpp
withholds bytes that do not yet form whole UTF-8 characters): the server did the work, so it is a
success counted in the server's tokens, with a ``note`` saying no text arrived. Without usage,
llama.cpp's ``timings.predicted_n`` counts the output tokens.

Failures are translated to `fmbench.errors` at one boundary (`_translate`): timeouts ->
`EndpointTimeout`; 429 -> `EndpointThrottled` (Retry-After parsed); other statuses ->
`EndpointHTTPError`; refused/reset/disconnected before any byte of an answer ->
`EndpointConnectionError` (the request never reached the endpoint); an answer cut off after it began
(reset or closed mid-body), unparseable JSON, malformed SSE, a stream without ``[DONE]``, or without
any output text or server count -> `EndpointProtocolError`.
The API key is sent in a header only; it is redacted from any message that might echo it.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import json
import math
import select
import ssl
import time
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.payload import BytesPayload
from yarl import URL

from fmbench.config import InferenceConfig
from fmbench.endpoints._chat import ANSWERED_WHOLE as _ANSWERED_WHOLE
from fmbench.endpoints._chat import NO_TEXT as _NO_TEXT
from fmbench.endpoints._chat import cached_count as _cached_count
from fmbench.endpoints._chat import cut_note as _cut_note
from fmbench.endpoints._chat import error_event, is_error_event
from fmbench.endpoints._chat import finish_reason as _finish_reason
from fmbench.endpoints._chat import output_piece as _output_piece
from fmbench.endpoints._chat import usage_counts as _usage_counts
from fmbench.endpoints._deadline import Deadlines
from fmbench.errors import (
    NO_ANSWER_BYTE,
    ConfigError,
    EndpointConnectionError,
    EndpointError,
    EndpointHTTPError,
    EndpointProtocolError,
    EndpointThrottled,
    EndpointTimeout,
    answer_cut_off,
)
from fmbench.protocol import ANSWERS_FIELD, Completion, Prompt
from fmbench.rxstamp import EVENT_LOOP, KERNEL, arrival_time, stamp_reads

try:  # orjson parses a chunk ~3x faster and encodes a 32k-token prompt ~5x faster; it is optional
    import orjson

    _loads: Any = orjson.loads
    _dumps: Any = orjson.dumps
    _JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
    _JSONError = (ValueError,)

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")

_MAX_MESSAGE = 200  # characters of a server error body kept in a message
_ERROR_BODY_BYTES = 8192  # bytes read from an error response
_DRAIN_S = 0.5  # wait this long for the body to end after [DONE]
_BODY_CACHE_BYTES = 64 << 20  # encoded request bodies kept per client
_JSON = "application/json"

__all__ = ["OpenAIClient"]

# Exception classes of aiohttp/asyncio/OS mapped to our tree, most specific first. `_translate`
# walks this table; tests check every aiohttp exception class lands on an explicit entry.
_EXCEPTION_MAP: tuple[tuple[type[BaseException], type[EndpointError], str], ...] = (
    (aiohttp.ConnectionTimeoutError, EndpointTimeout, "connection timed out"),
    (aiohttp.SocketTimeoutError, EndpointTimeout, "read timed out"),
    (TimeoutError, EndpointTimeout, "request timed out"),  # asyncio's and aiohttp.ServerTimeoutError
    (aiohttp.InvalidURL, EndpointConnectionError, "invalid URL"),
    (aiohttp.NonHttpUrlClientError, EndpointConnectionError, "not an http(s) URL"),
    # before ClientConnectorError, its base: the one a private CA's server gets without ca_bundle
    (aiohttp.ClientConnectorCertificateError, EndpointConnectionError,
     "server certificate not trusted (signed by a private CA? set the endpoint's ca_bundle)"),
    (aiohttp.ClientConnectorError, EndpointConnectionError, "cannot connect"),  # refused, DNS, TLS, proxy
    (aiohttp.ServerDisconnectedError, EndpointConnectionError, "server disconnected"),
    # a body's error: the answer had begun, so the endpoint failed it (see `_translate`)
    (aiohttp.ClientPayloadError, EndpointProtocolError, "answer cut off"),
    (aiohttp.ClientConnectionResetError, EndpointConnectionError, "connection reset"),
    (aiohttp.ClientOSError, EndpointConnectionError, "connection failed"),
    (aiohttp.ServerFingerprintMismatch, EndpointConnectionError, "TLS fingerprint mismatch"),
    (aiohttp.ServerConnectionError, EndpointConnectionError, "server connection failed"),
    (aiohttp.ClientConnectionError, EndpointConnectionError, "connection failed"),
    (aiohttp.UploadAbortedError, EndpointConnectionError, "upload aborted"),
    (aiohttp.RedirectClientError, EndpointProtocolError, "bad redirect"),
    (
        aiohttp.ClientResponseError,
        EndpointProtocolError,
        "invalid HTTP response",
    ),  # bad status line, redirects
    (ConnectionError, EndpointConnectionError, "connection failed"),
    (OSError, EndpointConnectionError, "connection failed"),
    (UnicodeDecodeError, EndpointProtocolError, "answer is not UTF-8"),
    (aiohttp.ClientError, EndpointProtocolError, "HTTP client error"),  # catch-all, last on purpose
)


def _translate(exc: BaseException, secrets: tuple[str, ...], answer_begun: bool = False) -> EndpointError:
    """Map a dependency exception to our error tree (the module's one translation boundary).

    With ``answer_begun`` (a byte of the answer had arrived), a connection that breaks is the
    endpoint cutting its answer off (`fmbench.errors.answer_cut_off`)."""
    for cls, target, what in _EXCEPTION_MAP:
        if isinstance(exc, cls):
            detail = str(exc)
            if target is EndpointTimeout and not answer_begun:
                what = f"{what}, {NO_ANSWER_BYTE}"
            message = f"{what} ({type(exc).__name__}{': ' + detail if detail else ''})"
            err = answer_cut_off(target(message), answer_begun)
            err.args = (_redact(str(err), secrets)[: _MAX_MESSAGE * 2],)  # the final message, as stored
            return err
    return EndpointProtocolError(
        _redact(f"unexpected {type(exc).__name__}: {exc}", secrets)[: _MAX_MESSAGE * 2]
    )


#: The send stamp of the request the current task is sending: ``[None]`` until its first write.
#: aiohttp writes a request from the task that sends it (or a task it starts, which inherits the
#: context), so the transport's write finds the right request's holder here.
_SEND_STAMP: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("fmbench_send_stamp", default=None)


class _SendStampingHandler(ResponseHandler):
    """aiohttp's connection protocol, extended for honest timing on servers that close connections.

    Its transport stamps the first write of each request (``t_start``) and notes, in the request's
    holder, which connection carried it and how many requests that connection had carried before.
    It remembers whether any byte of the current answer arrived, and it refuses to be reused (via
    `is_connected`, which aiohttp's pool asks before handing out an idle connection) once the
    server's ``Keep-Alive`` idle timeout or request limit is reached, or once the peer closed it
    (a zero-timeout poll of the idle socket, as urllib3 does: a FIN or RST the event loop has not
    processed yet). ``Connection: close`` aiohttp honours itself.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stamp_counts: dict[str, int] | None = None) -> None:
        super().__init__(loop)
        self._stamp_counts = stamp_counts  # the client's connections by how their reads are stamped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.served = 0  # requests this connection carried (their first write happened)
        self.rx = False  # a byte of the current request's answer arrived
        self.last_rx = time.monotonic()
        self.sent_at = -math.inf  # when the current request's first write went out
        self.idle_limit_s: float | None = None  # from the server's Keep-Alive timeout, less a margin
        self.max_requests: int | None = None  # from the server's Keep-Alive max
        self._poll: Any = None
        # Reads are stamped by the kernel where it can (see `fmbench.rxstamp`): when the bytes
        # arrived, not when this process got to them.
        self._rxsock = stamp_reads(transport)
        if self._stamp_counts is not None:
            self._stamp_counts[KERNEL if self._rxsock is not None else EVENT_LOOP] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            try:
                poller = select.poll()
                poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
                self._poll = poller
            except (OSError, ValueError):  # pragma: no cover - not a pollable socket
                self._poll = None
        write = getattr(transport, "write", None)
        writelines = getattr(transport, "writelines", None)
        if write is None or writelines is None:
            return
        clock, stamp = time.monotonic, _SEND_STAMP

        def first_write() -> None:
            holder = stamp.get()
            if holder is not None and holder[0] is None:
                holder[0] = self.sent_at = clock()
                holder.append(self)
                holder.append(self.served)
                self.served += 1
                self.rx = False

        def write_stamped(data: Any) -> None:
            first_write()
            write(data)

        # aiohttp writes a large request in pieces with ``writelines`` (Python >= 3.12.9), and
        # asyncio's TLS transport does not route that through ``write``: both are stamped.
        def writelines_stamped(chunks: Any) -> None:
            first_write()
            writelines(chunks)

        try:
            transport.write = write_stamped  # type: ignore[attr-defined]
            transport.writelines = writelines_stamped  # type: ignore[attr-defined]
        except AttributeError:  # a transport class that forbids it: t_start falls back
            pass

    def data_received(self, data: bytes, _base: Any = ResponseHandler.data_received, _clock: Any = time.monotonic,
                      _arrival: Any = arrival_time) -> None:
        # Runs on every read: the base method and the clock are bound once, not looked up per call.
        self.rx = True
        # the kernel's stamp of this read where it has one (never before the request went out)
        self.last_rx = _arrival(self._rxsock, _clock(), self.sent_at)
        _base(self, data)

    def is_connected(self, _base: Any = ResponseHandler.is_connected) -> bool:
        # aiohttp asks this of idle pooled connections only (before reuse and when sweeping the pool).
        if not _base(self):
            return False
        if self.idle_limit_s is not None and time.monotonic() - self.last_rx > self.idle_limit_s:
            return False
        if self.max_requests is not None and self.served >= self.max_requests:
            return False
        if self._poll is not None:
            try:
                if self._poll.poll(0):  # readable while idle: the peer closed it (or sent garbage)
                    return False
            except OSError:  # pragma: no cover
                return False
        return True

    def note_keep_alive(self, header: str) -> None:
        """Apply a ``Keep-Alive: timeout=T, max=N`` response header to this connection's reuse."""
        timeout, most = _parse_keep_alive(header)
        if timeout is not None:
            # The server's idle timer starts when it has sent the answer; leave a margin for the
            # network and for our own scheduling so we never send into a closing connection.
            self.idle_limit_s = max(0.0, timeout - min(1.0, 0.25 * timeout))
        if most is not None:
            # Servers differ on whether `max` counts down (Apache: requests left) or stays the
            # connection's total (cpp-httplib); reading it as the total is safe under both.
            self.max_requests = most if self.max_requests is None else min(self.max_requests, most)


def _parse_keep_alive(header: str) -> tuple[float | None, int | None]:
    """``timeout`` seconds and ``max`` requests of a Keep-Alive header (None where absent or bad)."""
    timeout: float | None = None
    most: int | None = None
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        key = key.strip().lower()
        try:
            if key == "timeout":
                timeout = float(value)
            elif key == "max":
                most = int(value)
        except ValueError:
            continue
    return timeout, most


def _never_read(sent: list[Any], exc: BaseException, hooked: bool) -> bool:
    """True when a failed request provably never reached the server's request handling: the
    pooled connection it went out on had carried earlier requests and no byte of an answer came
    back (the server had closed it: keep-alive limit, idle timeout, a proxy's recycling), or no
    byte of it was ever written. A failure to connect, a timeout, or any failure on a connection
    that was new is the endpoint's, and is never sent again."""
    if not hooked or isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError, TimeoutError)):
        return False
    if len(sent) < 3:  # not one byte of the request went out
        return True
    proto, served_before = sent[1], sent[2]
    return bool(served_before > 0 and not proto.rx)


def _answer_arrived(sent: list[Any]) -> bool:
    """True when the connection the request went out on saw a byte of its answer (status line,
    headers or body): a request that failed after that reached the endpoint."""
    return len(sent) > 1 and bool(sent[1].rx)


#: The shortest start of a secret `_redact` masks where a quote of an answer was cut inside it.
_SECRET_HEAD = 8


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret, and every start of one a quote cut short (at least `_SECRET_HEAD`
    characters of it, or all of a shorter one), replaced by ``***``: messages quote answers cut to a few
    dozen bytes, and a cut can fall inside a secret the answer echoed."""
    for secret in secrets:
        head = secret[:_SECRET_HEAD]
        if not head:
            continue
        out: list[str] = []
        i = text.find(head)
        end = 0
        while i >= 0:
            n = len(head)
            while n < len(secret) and i + n < len(text) and text[i + n] == secret[n]:
                n += 1
            out += (text[end:i], "***")
            end = i + n
            i = text.find(head, end)
        text = "".join(out) + text[end:] if out else text
    return text


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(body: bytes) -> str:
    """A short message from an error body: OpenAI error JSON, other JSON, or text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if msg:
                text = str(msg)
        elif isinstance(err, str):
            text = err
        elif data.get("detail"):
            text = str(data["detail"])
    text = " ".join(text.split())
    return text[:_MAX_MESSAGE] + ("..." if len(text) > _MAX_MESSAGE else "") if text else "(empty body)"


class _SSEDecoder:
    """Incremental server-sent-events decoder: bytes in, complete ``data`` payloads out.

    Linear in the stream length: each read is split once at its newlines, and a line spanning
    several reads is gathered as a list and joined once (no growing buffer is re-scanned).
    Lines may end in ``\\n`` or ``\\r\\n``.
    """

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # pieces of the unfinished last line
        self._data: list[bytes] = []  # data lines of the event being read

    def feed(self, read: bytes) -> list[bytes]:
        """Add one read; return the payloads of the events it completed."""
        if not self._tail and not self._data and read[:6] == b"data: " and read[-2:] == b"\n\n" and (
            b"\r" not in read
        ):
            # The common shape (every event one ``data: `` line and its blank line, as OpenAI, vLLM
            # and llama.cpp send) is split in C: its payloads are exactly what the general path
            # returns, and any other line shows as a newline the split did not consume.
            payloads = read[6:-2].split(b"\n\ndata: ")
            if read.count(b"\n") == 2 * len(payloads):
                return payloads
        if b"\n" not in read:
            self._tail.append(read)
            return []
        if self._tail:
            self._tail.append(read)
            read = b"".join(self._tail)
        lines = read.split(b"\n")
        last = lines.pop()
        self._tail = [last] if last else []
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:  # blank line: the event is complete
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data = self._data = []
            elif line[:5] == b"data:":
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[:1] != b":" and not line.startswith((b"event:", b"id:", b"retry:")):
                raise EndpointProtocolError(f"malformed SSE line: {line[:80]!r}")
        return out

    def unfinished_line(self) -> bytes:
        """The bytes after the last newline: a line the stream ended in before its end (else empty)."""
        return b"".join(self._tail)

    def pending(self) -> bytes:
        """The payload of an event the stream ended in before its blank line (else empty)."""
        tail = b"".join(self._tail).rstrip(b"\r")
        data = list(self._data)
        if tail.startswith(b"data:"):
            data.append(tail[6:] if tail[5:6] == b" " else tail[5:])
        return b"\n".join(data).strip()


def _not_an_event_stream(resp: aiohttp.ClientResponse) -> str:
    """`` (its Content-Type is T, not text/event-stream)`` for an answer that says it is something else
    (a proxy's sign-in page, a web server's error page), else empty."""
    if resp.content_type == "text/event-stream":
        return ""
    return f" (its Content-Type is {resp.content_type}, not text/event-stream)"


def _ended_without_done(resp: aiohttp.ClientResponse, decoder: _SSEDecoder) -> str:
    """Why a stream is not a complete answer, with what says where it came from: a body that is no
    event stream at all (a proxy's login page on one line, say) is named by its type and its start."""
    why = "stream ended without [DONE]" + _not_an_event_stream(resp)
    line = decoder.unfinished_line()
    return f"{why}; it ended inside a line: {line[:80]!r}" if line else why


class OpenAIClient:
    """Calls an OpenAI-compatible endpoint and measures each request.

    Args:
        base_url: URL including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``).
        model: model name sent with every request.
        api: ``"chat"`` for /chat/completions, ``"completions"`` for /completions.
        inference: generation parameters and the per-request timeout.
        api_key: sent as ``Authorization: Bearer``; never logged or placed in a message.
        headers: extra HTTP headers.
        secret_headers: HTTP headers whose values are secrets (``headers_env``): sent like
            ``headers``, and redacted like the API key from any message that might echo them.
        send_answers: put the prompt's reference answers in the body (``fmbench_answers``), for the
            simulated endpoint's answer model only; never sent to a real server.
        ca_bundle: PEM file of the certificate authorities an https server's certificate is checked
            against instead of the system's (a private CA); read at `open`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api: Literal["chat", "completions"] = "chat",
        inference: InferenceConfig | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        secret_headers: Mapping[str, str] | None = None,
        send_answers: bool = False,
        ca_bundle: str | None = None,
    ) -> None:
        if api not in ("chat", "completions"):
            raise ValueError(f"api must be 'chat' or 'completions', got {api!r}")
        self.model = model
        self.api = api
        self.inference = inference or InferenceConfig()
        self._chat = api == "chat"
        self._url = URL(base_url.rstrip("/") + ("/chat/completions" if self._chat else "/completions"))
        self._secrets = tuple(s for s in (api_key, *(secret_headers or {}).values()) if s)
        # A User-Agent of our own, set here rather than skipped per request: aiohttp's
        # ``skip_auto_headers`` copies and sorts header sets on every request.
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json",
                         "User-Agent": "fmbench"}
        if any(k.lower() == "user-agent" for k in headers or {}):
            del self._headers["User-Agent"]
        self._headers.update(headers or {})
        self._headers.update(secret_headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._deadlines: Deadlines | None = None  # the per-request timeouts, while open
        self._hooked = False
        self._stamp_counts: dict[str, int] = {KERNEL: 0, EVENT_LOOP: 0}  # see receive_stamps
        self._max_resends = 0
        self._stream = self.inference.stream
        self._timeout = self.inference.timeout_s
        base: dict[str, Any] = {
            "model": model,
            "max_tokens": self.inference.max_tokens,
            "temperature": self.inference.temperature,
            "stream": self._stream,
        }
        if self.inference.top_p is not None:
            base["top_p"] = self.inference.top_p
        if self._stream:
            base["stream_options"] = {"include_usage": True}
        base.update(self.inference.extra_body)
        self._body = base
        self._bodies: dict[Prompt, BytesPayload] = {}  # encoded request bodies by prompt (see _payload)
        self._bodies_bytes = 0
        self._send_answers = send_answers
        self._ca_bundle = ca_bundle

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIClient(url={str(self._url)!r}, model={self.model!r}, api={self.api!r})"

    async def open(self, concurrency: int) -> None:
        """Create the session; the pool holds ``concurrency`` connections (``<= 0``: no limit)."""
        if self._session is not None:
            await self.close()
        limit = max(0, concurrency)
        verify: ssl.SSLContext | bool = True  # aiohttp's default: the system's certificate authorities
        if self._ca_bundle:
            try:
                verify = ssl.create_default_context(cafile=self._ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"endpoint ca_bundle {self._ca_bundle}: cannot load the certificate "
                                  f"authorities ({type(exc).__name__}: {exc})") from exc
        # No limit_per_host: a client has one URL, so ``limit`` already bounds its one host, and
        # aiohttp keeps per-host sets on every request when it is set.
        connector = aiohttp.TCPConnector(limit=limit, keepalive_timeout=300, enable_cleanup_closed=False,
                                         ssl=verify)
        # New connections stamp their writes and know when they may be reused (see the class).
        self._hooked = callable(getattr(connector, "_factory", None))
        self._stamp_counts = {KERNEL: 0, EVENT_LOOP: 0}
        if self._hooked:
            connector._factory = functools.partial(  # type: ignore[assignment]
                _SendStampingHandler, loop=asyncio.get_running_loop(), stamp_counts=self._stamp_counts)
        # A resend takes another pooled connection (which may be stale too) or a new one; on a new
        # one a failure is final, so this bound is only a guard.
        self._max_resends = (limit or 16) + 1
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        )
        self._deadlines = Deadlines(self._timeout, asyncio.get_running_loop())

    def receive_stamps(self) -> dict[str, int] | None:
        """The connections made since `open`, by how the arrival of their answers' bytes was stamped:
        ``kernel`` (the socket's receive stamp, see `fmbench.rxstamp`) or ``event_loop`` (when this
        process's loop got to the read: not Linux, or a transport without a plain socket inside).
        None when no connection was made, or they could not be told apart."""
        counts = self._stamp_counts
        if not self._hooked or not any(counts.values()):
            return None
        return dict(counts)

    async def close(self) -> None:
        """Close the session and its connections."""
        self._bodies, self._bodies_bytes = {}, 0  # a client reused for another shard starts empty
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _payload(self, prompt: Prompt) -> BytesPayload:
        # A shard sends each prompt many times: its body is encoded once, up to a memory bound
        # (beyond it, prompts are encoded per request as before), and handed to aiohttp as the
        # payload object it would otherwise build from the bytes on every request (its payload
        # registry's lookup and a `BytesPayload`, whose bytes aiohttp only reads: reusable).
        try:
            cached = self._bodies.get(prompt)
        except TypeError:  # unhashable (answers given as a list): encoded each time
            return BytesPayload(self._encode(prompt), content_type=_JSON)
        if cached is not None:
            return cached
        data = self._encode(prompt)
        body = BytesPayload(data, content_type=_JSON)
        if self._bodies_bytes + len(data) <= _BODY_CACHE_BYTES:
            self._bodies[prompt] = body
            self._bodies_bytes += len(data)
        return body

    def _encode(self, prompt: Prompt) -> bytes:
        body = dict(self._body)
        if self._chat:
            body["messages"] = [{"role": "user", "content": prompt.text}]
        else:
            body["prompt"] = prompt.text
        if self._send_answers and prompt.answers:
            body[ANSWERS_FIELD] = list(prompt.answers)
        return bytes(_dumps(body))

    async def complete(self, prompt: Prompt) -> Completion:
        """Send one request and measure it.

        A request that never reached the server (see `_never_read`: sent on a pooled connection the
        server had already closed) is sent again at once on another connection, and its timing
        starts at the send that got an answer; the resends are counted in the `Completion` (or in
        the error's ``resends``), never reported as endpoint errors.

        Raises:
            EndpointTimeout, EndpointThrottled, EndpointHTTPError, EndpointConnectionError,
            EndpointProtocolError: see the module docstring.
        """
        session = self._session
        if session is None:
            raise EndpointConnectionError("client is not open (call open() first)")
        data = self._payload(prompt)
        resends = 0
        deadlines = self._deadlines
        task = deadlines.start() if deadlines is not None else None  # the timeout (see _deadline)
        sent: list[Any] = [None]
        answered = False  # the status line and headers arrived
        try:
            while True:
                sent = [None]
                _SEND_STAMP.set(sent)
                t_start = time.monotonic()
                try:
                    resp = await session.post(self._url, data=data)
                except aiohttp.ClientConnectionError as exc:
                    if resends < self._max_resends and _never_read(sent, exc, self._hooked):
                        resends += 1
                        continue
                    raise
                break
            answered = True
            async with resp:
                t_start = sent[0] or t_start
                if len(sent) > 1 and (keep_alive := resp.headers.get("Keep-Alive")):
                    sent[1].note_keep_alive(keep_alive)
                if resp.status >= 400:
                    raise await self._http_error(resp)
                ctype = resp.headers.get("Content-Type", "")
                rx = sent[1] if len(sent) > 1 else None  # the connection's protocol, if hooked
                if self._stream and not ctype.startswith("application/json"):
                    comp = await self._read_stream(resp, t_start, rx)
                else:
                    comp = await self._read_body(resp, t_start, rx)
                comp.resends = resends
                return comp
        except asyncio.CancelledError as exc:
            if task is None or deadlines is None or not deadlines.expired(task):
                raise
            silent = not (answered or _answer_arrived(sent))
            err: EndpointError = EndpointTimeout(
                f"{NO_ANSWER_BYTE} within {self._timeout:g} s" if silent
                else f"no complete answer within {self._timeout:g} s")
            err.resends = resends
            raise err from exc
        except EndpointError as exc:
            exc.resends = resends
            if self._secrets and exc.args:  # (a message may quote the answer: a page that echoes the request)
                exc.args = (_redact(str(exc), self._secrets),)
            raise
        except Exception as exc:  # the translation boundary for aiohttp/asyncio/OS errors
            err = _translate(exc, self._secrets, answered or _answer_arrived(sent))
            err.resends = resends
            raise err from exc
        finally:
            if task is not None and deadlines is not None:
                deadlines.stop(task)

    async def _http_error(self, resp: aiohttp.ClientResponse) -> EndpointHTTPError:
        try:
            body = await resp.content.read(_ERROR_BODY_BYTES)
            cut = ""
        except aiohttp.ClientError:  # the status is the answer; its explanation broke off
            body, cut = b"", " (its body cut off)"
        msg = _redact(f"HTTP {resp.status}: {_error_message(body)}{cut}", self._secrets)
        if resp.status == 429:
            return EndpointThrottled(msg, 429, _retry_after(resp.headers.get("Retry-After")))
        return EndpointHTTPError(msg, resp.status)

    async def _read_body(self, resp: aiohttp.ClientResponse, t_start: float,
                         rx: _SendStampingHandler | None) -> Completion:
        raw = await resp.read()
        t_end = rx.last_rx if rx is not None else time.monotonic()  # when its last bytes arrived
        try:
            data = _loads(raw)
        except _JSONError as exc:
            raise EndpointProtocolError(f"answer is not JSON: {raw[:80]!r}") from exc
        if not isinstance(data, dict):
            raise EndpointProtocolError(f"answer is not a JSON object: {type(data).__name__}")
        if is_error_event(data):
            raise self._stream_error(data)
        text = _output_piece(data, self._chat) or ""
        input_tokens, output_tokens = _usage_counts(data.get("usage"), data.get("timings"))
        cached_tokens = _cached_count(data.get("usage"), data.get("timings"))
        if not text and not output_tokens:
            raise EndpointProtocolError("answer carries no output text")
        return Completion(
            t_start=t_start,
            t_end=t_end,
            t_first_token=t_end,
            chunk_times=[],
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            http_status=resp.status,
            note=(_cut_note(_finish_reason([data]), output_tokens, self.inference.max_tokens)
                  or (None if text else _NO_TEXT) or (_ANSWERED_WHOLE if self._stream else None)),
        )

    def _stream_error(self, event: dict[str, Any]) -> EndpointHTTPError:
        # (as SageMaker's client reads the same event: `_chat.error_event`)
        msg = _redact(_error_message(json.dumps(event).encode()), self._secrets)
        return error_event(event, lambda status: f"error in answer (status {status}): {msg}")

    @staticmethod
    async def _drain(resp: aiohttp.ClientResponse) -> None:
        # The body's end usually follows [DONE] at once; reading it keeps the connection in the
        # pool. A server that holds the stream open only costs its connection, not a timeout.
        try:
            async with asyncio.timeout(_DRAIN_S):
                await resp.content.read()
        except (TimeoutError, aiohttp.ClientError):
            resp.close()

    async def _read_stream(self, resp: aiohttp.ClientResponse, t_start: float,
                           rx: _SendStampingHandler | None) -> Completion:
        chat = self._chat
        decoder = _SSEDecoder()
        pieces: list[str] = []
        chunk_times: list[float] = []
        usage: dict[str, Any] | None = None
        timings: Any = None  # llama.cpp's own counts, for a stream without usage
        done = False
        tail: list[Any] = []  # the events of the last read that had any, and of the one before
        before_tail: list[Any] = []
        now = t_start
        clock, loads, feed = time.monotonic, _loads, decoder.feed
        add_piece = pieces.append
        async for read in resp.content.iter_any():
            # When the last of these bytes arrived: the protocol stamps each socket read (with the
            # kernel's receive stamp where there is one), not when this task wakes, a loop turn
            # later behind every other callback ready then.
            now = rx.last_rx if rx is not None else clock()
            try:
                payloads = feed(read)
            except EndpointProtocolError as exc:  # (a malformed line: say what kind of body it was in)
                raise EndpointProtocolError(f"{exc}{_not_an_event_stream(resp)}") from None
            if not payloads:
                continue
            if b"[DONE]" in payloads:  # what follows [DONE] is never read
                del payloads[payloads.index(b"[DONE]"):]
                done = True
            bad: Exception | None = None
            try:
                events = list(map(loads, payloads))
            except _JSONError:  # the events before the bad one still count (one may be an error)
                events = []
                for payload in payloads:
                    try:
                        events.append(loads(payload))
                    except _JSONError as exc:
                        bad = exc
                        break
            before = len(pieces)
            for event in events:
                # Most chunks carry text where the API puts it: read straight through, and anything
                # else (role-only, usage, reasoning, errors) the full way.
                try:
                    piece = event["choices"][0]["delta"]["content"] if chat else event["choices"][0]["text"]
                except (KeyError, IndexError, TypeError):
                    piece = None
                if piece.__class__ is not str:  # (None, or not text: the full way says what it is)
                    piece = None
                if piece and "error" in event and event["error"]:  # named beside text (`is_error_event`)
                    raise self._stream_error(event)
                if not piece:
                    if not isinstance(event, dict):
                        payload = payloads[next(i for i, e in enumerate(events) if e is event)]
                        raise EndpointProtocolError(f"SSE event is not a JSON object: {payload[:80]!r}")
                    if is_error_event(event):
                        raise self._stream_error(event)
                    piece = _output_piece(event, chat)
                    if not piece:
                        continue
                add_piece(piece)
            if len(pieces) > before:  # every chunk of one read has the read's stamp
                chunk_times.extend([now] * (len(pieces) - before))
            if events:  # (the finish_reason is read once, at the end: from these)
                before_tail, tail = tail, events
            # The stream's last usage counts (some servers send one with every chunk); without
            # any, llama.cpp's last timings. Looked for from the end of each read.
            for event in reversed(events):
                if event.get("usage"):
                    usage = event["usage"]
                    timings = event.get("timings")  # llama.cpp's beside it: its cache_n, should usage lack it
                    break
            else:
                if usage is None:
                    for event in reversed(events):
                        if event.get("timings"):
                            timings = event["timings"]
                            break
            if bad is not None:
                raise EndpointProtocolError(f"SSE event is not JSON: {payloads[len(events)][:80]!r}") from bad
            if done:
                break
        if not done:
            if decoder.pending() == b"[DONE]":
                done = True  # a final event without its blank line
            else:
                raise EndpointProtocolError(_ended_without_done(resp, decoder))
        input_tokens, output_tokens = _usage_counts(usage, timings)
        cached_tokens = _cached_count(usage, timings)
        note = _cut_note(_finish_reason(tail, before_tail), output_tokens, self.inference.max_tokens)
        if not chunk_times:
            if not output_tokens:
                raise EndpointProtocolError("stream carried no output text")
            note = _NO_TEXT
        if not resp.content.is_eof():
            await self._drain(resp)
        return Completion(
            t_start=t_start,
            t_end=now,
            t_first_token=chunk_times[0] if chunk_times else None,
            chunk_times=chunk_times,
            text="".join(pieces),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            http_status=resp.status,
            note=note,
        )
