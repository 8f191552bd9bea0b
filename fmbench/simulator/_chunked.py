"""Synchronous HTTP/1.1 chunked writes to a prepared aiohttp stream, for the core's decode step.

aiohttp's `StreamResponse.write` is a coroutine; the decode step writes every due stream in one
plain function call, so it frames the chunks itself (RFC 9112, section 7.1) and hands them to the
connection. It uses only aiohttp's and asyncio's public surface: the response is made chunked
(`StreamResponse.enable_chunked_encoding`) and prepared, its buffered status line and headers
are flushed with `AbstractStreamWriter.send_headers`, and the bytes go to `BaseRequest.transport`.
aiohttp's own `write_eof` afterwards ends the body with the zero-length chunk as usual.

While the transport has nothing buffered, a chunk goes straight to the connection's socket with
one non-blocking ``write`` (the call `transport.write` makes itself when its buffer is empty, less
its Python checks: this runs once per output token); whatever the socket does not take, and any
error, goes through `transport.write`, which keeps the order, the flow control and the
transport's handling of a lost connection.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web


class ChunkedStream:
    """Writes whole HTTP chunks of one prepared, chunked `web.StreamResponse`, without awaiting.

    Raises:
        ValueError: the response is not prepared or not chunked (its body would be misframed).
    """

    __slots__ = ("_fd", "_request", "_transport")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        if not response.prepared or not response.chunked:
            raise ValueError("ChunkedStream needs a prepared response with chunked encoding enabled")
        self._request = request
        self._transport: asyncio.Transport | None = None
        self._fd = -1

    def write(self, data: bytes) -> bool:
        """Send ``data`` as one HTTP chunk now; False (nothing sent) once the connection is gone.

        The first call also sends the status line and headers if aiohttp has not (a prepared
        `web.StreamResponse` sends them at once; it is a no-op then).
        """
        if not data:  # a zero-length chunk would end the body
            return True
        return self.write_framed(b"%x\r\n%b\r\n" % (len(data), data))

    def write_framed(self, chunks: bytes) -> bool:
        """`write` for bytes that are already whole, non-empty HTTP chunks (``SIZE CRLF data CRLF``)."""
        transport = self._transport
        if transport is None:
            transport = self._request.transport
            if transport is None or transport.is_closing():
                return False
            self._request.writer.send_headers()
            self._transport = transport
            sock = transport.get_extra_info("socket")
            # Straight to the socket only on a plain TCP transport (TLS would need its own framing).
            if sock is not None and transport.get_extra_info("sslcontext") is None:
                self._fd = sock.fileno()
        elif transport.is_closing():  # checked first: a closing transport's fd may be reused
            return False
        fd = self._fd
        if fd >= 0 and not transport.get_write_buffer_size():
            try:
                n = os.write(fd, chunks)
            except OSError:  # full (EAGAIN) or broken: the transport retries and meets the error itself
                n = 0
            if n == len(chunks):
                return True
            chunks = chunks[n:]
        transport.write(chunks)
        return not transport.is_closing()  # a send error closes the transport at once
