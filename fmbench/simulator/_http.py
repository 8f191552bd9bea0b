"""aiohttp helpers for injected faults that any route family can reuse."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from aiohttp import web

from fmbench.simulator.app import SimContext
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


async def send_truncated_body(request: web.Request, body: bytes, content_type: str) -> web.StreamResponse:
    """Promise ``body`` with Content-Length, send half of it, then drop the connection."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    reset_connection(request)
    return resp
