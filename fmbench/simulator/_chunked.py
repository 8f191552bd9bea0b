"""Synchronous HTTP/1.1 chunked writes to a prepared aiohttp stream, for the core's decode step.

aiohttp's `StreamResponse.write` is a coroutine; the decode step writes every due stream in one
plain function call, so it frames the chunks itself (RFC 9112, section 7.1) and hands them to the
connection's transport. It uses only aiohttp's public surface: the response is made chunked
(`StreamResponse.enable_chunked_encoding`) and prepared, its buffered status line and headers
are flushed with `AbstractStreamWriter.send_headers`, and the bytes go to `BaseRequest.transport`.
aiohttp's own `write_eof` afterwards ends the body with the zero-length chunk as usual.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


class ChunkedStream:
    """Writes whole HTTP chunks of one prepared, chunked `web.StreamResponse`, without awaiting.

    Raises:
        ValueError: the response is not prepared or not chunked (its body would be misframed).
    """

    __slots__ = ("_request", "_transport")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        if not response.prepared or not response.chunked:
            raise ValueError("ChunkedStream needs a prepared response with chunked encoding enabled")
        self._request = request
        self._transport: asyncio.Transport | None = None

    def write(self, data: bytes) -> bool:
        """Send ``data`` as one HTTP chunk now; False (nothing sent) once the connection is gone.

        The first call also sends the status line and headers, which aiohttp holds back until
        the first body write.
        """
        if not data:  # a zero-length chunk would end the body
            return True
        transport = self._transport
        if transport is None:
            transport = self._request.transport
            if transport is None or transport.is_closing():
                return False
            self._request.writer.send_headers()
            self._transport = transport
        elif transport.is_closing():
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True
