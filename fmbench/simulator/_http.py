"""aiohttp helpers for injected faults that any route family can reuse."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from fmbench.simulator.app import SimContext
from fmbench.simulator.core import yield_cpu
from fmbench.simulator.faults import Fault, FaultKind, hang_forever

#: Builds a family's error response: (status, message, error type/code) -> response.
ErrorResponder = Callable[[int, str, str], web.Response]


def reset_connection(request: web.Request) -> None:
    """Drop the client's TCP connection with a reset (RST), mid-whatever it was reading."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # Linger 0 makes close() send RST instead of FIN: the client sees a reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


async def early_fault_response(ctx: SimContext, fault: Fault, error: ErrorResponder) -> web.Response | None:
    """Answer the faults that strike before generation (500, 503, 429, hang); None otherwise."""
    kind = fault.kind
    if kind is FaultKind.HTTP_500:
        return error(500, "simulated internal server error", "server_error")
    if kind is FaultKind.HTTP_503:
        return error(503, "simulated service unavailable: the engine is overloaded", "service_unavailable")
    if kind is FaultKind.THROTTLE:
        resp = error(429, "simulated rate limit: too many requests", "rate_limit_exceeded")
        resp.headers["Retry-After"] = f"{ctx.faults.config.retry_after_s:g}"
        return resp
    if kind is FaultKind.HANG:
        await hang_forever()
    return None


# A send stamp in a fixed width (JSON allows the leading spaces), so the Content-Length is known
# before the stamp is taken: monotonic seconds need 7 + 6 digits for the next 30 years of uptime.
_STAMP_WIDTH = 20


async def send_stamped_body(request: web.Request, head: bytes, tail: bytes, content_type: str,
                            headers: Mapping[str, str]) -> web.StreamResponse:
    """Send ``head`` + the send stamp + ``tail`` as one body, stamped just before the socket write.

    A `web.Response` built with a stamp in its body reaches the socket only after aiohttp has
    returned from the handler, prepared the headers and written the body (hundreds of µs, more on a
    busy loop), and that time would be counted as the client's. Here everything but the stamp is
    encoded and the headers are prepared first; then, without awaiting, the stamp is taken and the
    headers and body go to the transport (`AbstractStreamWriter.send_headers`, `BaseRequest.transport`).
    """
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_type = content_type
    resp.content_length = len(head) + _STAMP_WIDTH + len(tail)
    await resp.prepare(request)
    transport = request.transport
    if transport is None or transport.is_closing():
        return resp
    request.writer.send_headers()
    transport.write(b"%b%*.6f%b" % (head, _STAMP_WIDTH, time.monotonic(), tail))
    yield_cpu()  # the client reads its answer before this server finishes the request
    await resp.write_eof()
    return resp


async def send_truncated_body(request: web.Request, body: bytes, content_type: str) -> web.StreamResponse:
    """Promise ``body`` with Content-Length, send half of it, then drop the connection."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    reset_connection(request)
    return resp
