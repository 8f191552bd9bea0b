"""A request's arrival stamped when its first bytes reach the socket, not in its handler.

aiohttp hands a parsed request to its handler one or two event-loop iterations after reading it
(the connection's task wakes, then the handler's task starts); on a busy loop that is
milliseconds. The simulator's arrival stamp starts its latency model and is the ground truth of
the client-overhead benchmark, so that time belongs to the server, not to the client's send.

`StampingSite` listens like `web.TCPSite` but wraps each connection's protocol in `ReadStamp`,
which notes the time of the first read while the connection is between requests; the middleware
`read_stamps` hands that stamp to the request (`request_arrival`). Reads that come while a request
is being handled are not stamped (a body's later parts, or a pipelined request): a request that
finds no stamp is stamped in its handler, as before, never earlier than it really arrived.

On Linux the stamp is the kernel's: each TCP connection has ``SO_TIMESTAMPNS`` on, and its
transport's socket is wrapped so that a read is a ``recvmsg`` that also returns when the data
reached the socket (`fmbench.rxstamp`). That is when the client's bytes arrived, however long this
server's event loop took to come to them (a decode step writing a hundred streams, another
request's handler, or the client itself holding the CPU the two share); a stamp taken at the read
charges that wait to the client's send. Where the kernel gives no stamp, the read's time is used.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fmbench.rxstamp import SO_TIMESTAMPNS, RxStampSocket, arrival_time, stamp_reads

#: The read stamp of a request (monotonic seconds), set by `read_stamps`.
READ_AT: web.RequestKey[float] = web.RequestKey("fmbench_read_at", float)


class ReadStamp(asyncio.Protocol):
    """Forwards every protocol call to aiohttp's handler, stamping the first read between requests."""

    __slots__ = ("_busy", "_inner", "_rx", "_stamp")

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._stamp: float | None = None
        self._busy = False
        self._rx: RxStampSocket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._rx = stamp_reads(transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._stamp is None and not self._busy:
            self._stamp = arrival_time(self._rx, time.monotonic())
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def begin(self) -> float | None:
        """A request starts: its read stamp (None if its bytes came while the last one was handled)."""
        stamp, self._stamp, self._busy = self._stamp, None, True
        return stamp

    def end(self) -> None:
        """The request's handler is done: the next read starts the next request."""
        self._busy = False


class StampingSite(web.TCPSite):
    """`web.TCPSite` whose connections are wrapped in `ReadStamp`."""

    __slots__ = ()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ReadStamp(server()), self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
        for sock in sockets:
            # Set on the listener, so that the kernel stamps what arrives from the start, also
            # a new connection's first request, read before its protocol wraps its socket.
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                pass


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def read_stamps(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its read stamp and mark its connection busy until the handler returns."""
    transport = request.transport
    proto: Any = transport.get_protocol() if transport is not None else None
    if not isinstance(proto, ReadStamp):  # served by another site (e.g. aiohttp's test server)
        return await handler(request)
    stamp = proto.begin()
    if stamp is not None:
        request[READ_AT] = stamp
    try:
        return await handler(request)
    finally:
        proto.end()


def request_arrival(request: web.Request) -> float:
    """When the request arrived: its read stamp (the kernel's, where there is one), else now."""
    return request.get(READ_AT) or time.monotonic()
