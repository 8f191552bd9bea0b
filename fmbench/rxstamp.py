"""When bytes reached a socket, by the kernel's clock: receive stamps for asyncio TCP transports.

A process that stamps a read with ``time.monotonic()`` when its event loop gets to it charges the
time the data waited for that loop (other callbacks, a decode step, the process not scheduled) to
whatever it measures. On Linux, a TCP socket with ``SO_TIMESTAMPNS`` on reports, with each
``recvmsg``, when the last of the bytes it returns arrived. `stamp_reads` wraps a selector
transport's socket so that its reads are such ``recvmsg`` calls (`RxStampSocket`), and
`arrival_time` turns the stamp of the last read into ``time.monotonic()`` seconds.

Used by the simulated endpoint (a request's arrival) and by the OpenAI client (when an answer's
bytes arrived). Over TLS the socket read is the encrypted stream's (asyncio's SSL transport reads
through a plain selector transport): what it decrypts is handed on within that read, so its stamp
is when the last bytes of the TLS records arrived. Where the kernel gives no stamp (not Linux, or a
transport without a plain socket inside, such as uvloop's), reads are not wrapped and the callers
fall back to the time their callback runs.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import sys
import time
from typing import Any

#: How a client's reads were stamped, as counted per connection (e.g. `OpenAIClient.receive_stamps`):
#: the kernel's receive stamp, or the time the event loop handled the read.
KERNEL, EVENT_LOOP = "kernel", "event_loop"
#: The AWS SDK's clients (SageMaker, Bedrock), counted per request sent: when botocore handed each part
#: of an answer to the request's own thread (no event loop between, but no kernel stamp either).
SDK_THREAD = "sdk_thread"

# Linux's SO_TIMESTAMPNS (the "old" one: a struct timespec of two longs, CLOCK_REALTIME); the
# socket module does not name it. SCM_TIMESTAMPNS, the control message's type, is the same number.
SO_TIMESTAMPNS = 35
_CMSG_SPACE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_TIMESPEC = struct.Struct("@ll")
_unpack_timespec, _TIMESPEC_SIZE = _TIMESPEC.unpack_from, _TIMESPEC.size
#: A kernel stamp further than this before the read is not believed (the wall clock was stepped).
MAX_STAMP_AGE_S = 1.0

_offset: list[float] = [0.0, -math.inf]  # CLOCK_REALTIME - CLOCK_MONOTONIC (s), when measured
#: A wall clock that moved against the monotonic one by more than this was stepped: re-measure.
_STEP_S = 0.001


def realtime_offset(now: float) -> float:
    """CLOCK_REALTIME minus ``time.monotonic()`` in seconds, measured at most a second ago, and at
    once when the wall clock was stepped since.

    The two clocks keep their distance unless the wall clock is stepped, so it is measured once a
    second, from the tightest of a few bracketing reads: a single pair of reads would be off by
    however long the process was held between them (tens of µs, now and then, on a VM). A step is
    seen on every call (one more clock read, against the last measurement), so a stamp is never
    converted with the offset from before a step.
    """
    if now - _offset[1] > 1.0 or abs(time.time() - now - _offset[0]) > _STEP_S:
        best = math.inf
        for _ in range(5):
            t0 = time.monotonic_ns()
            wall = time.time_ns()
            t1 = time.monotonic_ns()
            if t1 - t0 < best:
                best, offset = t1 - t0, (wall - (t0 + t1) // 2) / 1e9
        _offset[0], _offset[1] = offset, now
    return _offset[0]


class RxStampSocket:
    """A connected socket whose reads are ``recvmsg`` calls that keep the kernel's receive stamp.

    It stands in for the socket inside an asyncio selector transport, which reads with ``recv``
    (a plain protocol) or ``recv_into`` (a buffered one, such as asyncio's TLS layer); every other
    call goes to the socket itself.
    """

    __slots__ = ("_recvmsg", "_recvmsg_into", "_sock", "rx_ns", "send")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._recvmsg = sock.recvmsg
        self._recvmsg_into = sock.recvmsg_into
        self.send = sock.send  # the transport's every write: bound here, not looked up per call
        self.rx_ns = 0  # CLOCK_REALTIME ns of the last read's data, 0 if the kernel gave none

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancillary, _, _ = self._recvmsg(bufsize, _CMSG_SPACE, flags)
        # `_stamp_ns` inlined: this is every plain read of every connection
        if ancillary:  # SO_TIMESTAMPNS is the only option on: its message is the only one
            level, kind, payload = ancillary[0]
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC_SIZE:
                sec, nsec = _unpack_timespec(payload)
                self.rx_ns = sec * 1_000_000_000 + nsec
                return data
        self.rx_ns = 0  # never the stamp of an earlier read
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if nbytes:
            buffer = memoryview(buffer)[:nbytes]
        n, ancillary, _, _ = self._recvmsg_into((buffer,), _CMSG_SPACE, flags)
        self.rx_ns = _stamp_ns(ancillary)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _stamp_ns(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The stamp in a read's control messages (CLOCK_REALTIME ns), 0 if it carries none."""
    if ancillary:
        level, kind, payload = ancillary[0]
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC_SIZE:
            sec, nsec = _unpack_timespec(payload)
            return sec * 1_000_000_000 + nsec
    return 0


def stamp_reads(transport: asyncio.BaseTransport) -> RxStampSocket | None:
    """Wrap a selector transport's TCP socket in `RxStampSocket`; None where that cannot be done
    (not Linux, or no plain TCP selector transport inside: e.g. uvloop's).

    For asyncio's TLS transport it is the socket of the selector transport underneath that is
    wrapped: the stamp of its last read is when the bytes that completed what was decrypted arrived.
    """
    sock = getattr(transport, "_sock", None)
    if sock is None:  # asyncio's TLS transport: its SSL protocol reads through a selector transport
        raw = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        if raw is not None:
            transport, sock = raw, getattr(raw, "_sock", None)
    if (not sys.platform.startswith("linux") or not _CMSG_SPACE or type(sock) is not socket.socket
            or sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6)):
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return None
    wrapped = RxStampSocket(sock)
    transport._sock = wrapped  # type: ignore[attr-defined]
    return wrapped


def arrival_time(rx: RxStampSocket | None, now: float, floor: float = -math.inf) -> float:
    """When the last read's bytes arrived, in ``time.monotonic()`` seconds: the kernel's stamp of
    ``rx``'s last read where it has one and it is believable (before ``now``, not before ``floor``
    (a moment the caller knows the bytes came after) and not more than `MAX_STAMP_AGE_S` before
    ``now``), else ``now`` (the time the read was handled)."""
    if rx is not None and rx.rx_ns:
        kernel = rx.rx_ns / 1e9 - realtime_offset(now)
        if floor <= kernel < now and kernel > now - MAX_STAMP_AGE_S:
            return kernel
    return now
