"""What the wire saw: a loopback packet capture of one TCP port, and each HTTP exchange's times.

A client's TTFT against a real server can only be checked against something outside both: the
packets. `Capture` runs a capture process (``python -m benchmarks._wire PORT FILE``) on the ``lo``
interface with an ``AF_PACKET`` socket (needs root or ``CAP_NET_RAW``), keeping the kernel's
receive stamp of every TCP segment to or from the port. `exchanges` then rebuilds each connection's
two byte streams and splits them into HTTP/1.1 requests and their answers, so each request has

* ``t_request``: when its first byte reached the server's side of the wire (the client's send);
* ``t_first_text`` / ``t_last_text``: when the segment completing the first / last SSE event that
  carries output text (``choices[0].text`` or ``choices[0].delta.content``) reached the client's
  side.

A client's TTFT minus the wire's (``t_first_text - t_request``) is then what the client itself added:
the time between its send stamp and its bytes leaving, plus the time between the answer's arrival
and its read. Stamps are CLOCK_REALTIME nanoseconds; only differences are used, so no conversion
to ``time.monotonic()`` is needed (the two clocks tick at the same rate over milliseconds).

On ``lo`` the kernel shows each segment twice (sent, then received); the received copy is kept.
"""

from __future__ import annotations

import bisect
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from fmbench.rxstamp import SO_TIMESTAMPNS

_ETH_P_ALL = 0x0003
_PACKET_HOST = 0
_TIMESPEC = struct.Struct("@ll")
_RECORD = struct.Struct("<qHHIBI")  # stamp ns, src port, dst port, seq, tcp flags, payload length
_SYN = 0x02


def capture(port: int, out: Path) -> None:
    """Write every IPv4 TCP segment to or from ``port`` on ``lo`` to ``out`` until SIGTERM."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind(("lo", 0))
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock.settimeout(0.1)
    cmsg_space = socket.CMSG_SPACE(_TIMESPEC.size)
    with open(out, "wb") as f:
        print("ready", flush=True)
        while not stop:
            try:
                data, anc, _, addr = sock.recvmsg(65536, cmsg_space)
            except (TimeoutError, InterruptedError):
                continue
            if addr[2] != _PACKET_HOST or len(data) < 34 or data[12:14] != b"\x08\x00" or data[23] != 6:
                continue
            ihl = (data[14] & 0x0F) * 4
            tcp = 14 + ihl
            sport, dport, seq = struct.unpack_from("!HHI", data, tcp)
            if port not in (sport, dport):
                continue
            total = struct.unpack_from("!H", data, 16)[0]
            doff = (data[tcp + 12] >> 4) * 4
            payload = data[tcp + doff:14 + total]
            stamp = 0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(value[:_TIMESPEC.size])
                    stamp = sec * 1_000_000_000 + nsec
            if not stamp:
                stamp = time.time_ns()
            f.write(_RECORD.pack(stamp, sport, dport, seq, data[tcp + 13], len(payload)))
            f.write(payload)
        f.flush()


class Capture:
    """A capture process for one port, as a context manager; `exchanges` after it stopped.

    Raises:
        PermissionError: the capture could not start (no root or ``CAP_NET_RAW``).
    """

    def __init__(self, port: int, out: Path) -> None:
        self.port, self.out = port, out
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._wire", str(self.port), str(self.out)],
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "ready":
            err = self._proc.communicate(timeout=10)[1].strip().splitlines()
            raise PermissionError(f"packet capture did not start: {err[-1] if err else 'no output'}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            time.sleep(0.05)  # the last segments are in the socket's queue: let them be written
            self._proc.send_signal(signal.SIGTERM)
            self._proc.communicate(timeout=10)

    def exchanges(self) -> list[Exchange]:
        """The HTTP exchanges seen on the port (see `exchanges`)."""
        return exchanges(self.out, self.port)


@dataclass
class Exchange:
    """One HTTP request on one connection and what came back on it.

    Attributes:
        client_port: the connection's client-side port.
        request: the request's bytes (headers and body).
        t_request: stamp (ns) of the segment holding the request's first byte.
        t_request_end: stamp (ns) of the segment holding its last byte.
        t_first_text / t_last_text: stamps (ns) of the segments that completed the first / last
            SSE event with output text; None when no such event came (no answer, or not streamed).
        t_done: stamp (ns) of the segment that completed the ``data: [DONE]`` event (without one,
            the answer's last byte); None when no answer came.
        text_events: SSE events with output text.
        status: the answer's HTTP status; None when no answer came (e.g. the server had closed).
    """

    client_port: int
    request: bytes
    t_request: int
    t_request_end: int
    t_first_text: int | None = None
    t_last_text: int | None = None
    t_done: int | None = None
    text_events: int = 0
    status: int | None = None
    answer: bytes = field(default=b"", repr=False)


class _Stream:
    """One direction of one connection: its bytes in sequence order, with each byte's segment stamp."""

    def __init__(self) -> None:
        self.base: int | None = None
        self.segments: dict[int, tuple[int, bytes]] = {}

    def start(self, seq: int) -> None:
        """The sequence number of the direction's first data byte (from the SYN)."""
        self.base = seq

    def add(self, seq: int, stamp: int, payload: bytes) -> None:
        if self.base is None:  # the SYN was not seen: count from the first segment
            self.base = seq
        offset = (seq - self.base) % (1 << 32)
        if offset not in self.segments:  # a retransmission keeps the first copy's stamp
            self.segments[offset] = (stamp, payload)

    def assemble(self) -> tuple[bytes, list[tuple[int, int]]]:
        """The bytes, and (end offset, stamp) per segment in order."""
        data = bytearray()
        ends: list[tuple[int, int]] = []
        for offset in sorted(self.segments):
            stamp, payload = self.segments[offset]
            if offset + len(payload) <= len(data):
                continue
            data += payload[len(data) - offset:] if offset < len(data) else payload
            ends.append((len(data), stamp))
        return bytes(data), ends


def _stamp_at(ends: list[tuple[int, int]], offset: int) -> int:
    """The stamp of the segment holding byte ``offset``."""
    lo, hi = 0, len(ends) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ends[mid][0] > offset:
            hi = mid
        else:
            lo = mid + 1
    return ends[lo][1]


def _requests(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each HTTP request in a client's byte stream."""
    out = []
    pos = 0
    while pos < len(data):
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        length = 0
        for line in data[pos:head_end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        end = head_end + 4 + length
        out.append((pos, min(end, len(data))))
        pos = end
    return out


def _text_of(event: bytes) -> str:
    try:
        obj = json.loads(event)
    except ValueError:
        return ""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not choices:
        return ""
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content")
    return text or ""


def _answers(data: bytes, ends: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Each HTTP answer in a server's byte stream: status, and the stamps of its text events."""
    out: list[dict[str, Any]] = []
    pos = 0
    while pos < len(data):
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        lines = data[pos:head_end].split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        body = bytearray()
        origin: list[tuple[int, int]] = []  # (body offset, stream offset) at each HTTP chunk's start
        p = head_end + 4
        if headers.get(b"transfer-encoding") == b"chunked":
            while True:
                line_end = data.find(b"\r\n", p)
                if line_end < 0:
                    p = len(data)
                    break
                size = int(data[p:line_end].split(b";")[0], 16)
                p = line_end + 2
                if size == 0:
                    p = data.find(b"\r\n", p) + 2 if data.find(b"\r\n", p) >= 0 else len(data)
                    break
                origin.append((len(body), p))
                body += data[p:p + size]
                p += size + 2
        else:
            size = int(headers.get(b"content-length", b"0"))
            origin.append((0, p))
            body += data[p:p + size]
            p += size
        def stamp_of(body_offset: int, origin: list[tuple[int, int]] = origin) -> int:
            # through the HTTP chunk the byte lies in
            k = bisect.bisect_right(origin, body_offset, key=lambda o: o[0]) - 1
            return _stamp_at(ends, origin[k][1] + (body_offset - origin[k][0]))

        stamps: list[int] = []
        done = None
        start = 0
        while (nl := body.find(b"\n\n", start)) >= 0:
            event = bytes(body[start:nl])
            if event == b"data: [DONE]":
                done = stamp_of(nl + 1)
            elif event.startswith(b"data: ") and _text_of(event[6:]):
                stamps.append(stamp_of(nl - 1))
            start = nl + 2
        if done is None and body:
            done = stamp_of(len(body) - 1)
        out.append({"status": status, "stamps": stamps, "done": done, "answer": bytes(body)})
        pos = p
    return out


def exchanges(path: Path, port: int) -> list[Exchange]:
    """Every HTTP request to ``port`` in the capture file, with its answer's text stamps, in the
    order the requests' first bytes arrived."""
    conns: list[dict[str, Any]] = []
    live: dict[int, dict[str, Any]] = {}
    raw = path.read_bytes()
    pos = 0
    while pos + _RECORD.size <= len(raw):
        stamp, sport, dport, seq, flags, n = _RECORD.unpack_from(raw, pos)
        pos += _RECORD.size
        payload = raw[pos:pos + n]
        pos += n
        client = sport if dport == port else dport
        upstream = dport == port
        if flags & _SYN and upstream:  # a new connection from this client port
            live[client] = {"port": client, "up": _Stream(), "down": _Stream()}
            conns.append(live[client])
            live[client]["up"].start((seq + 1) % (1 << 32))
            continue
        conn = live.get(client)
        if conn is None:
            continue
        if flags & _SYN:  # the server's SYN-ACK: its first data byte is seq + 1
            conn["down"].start((seq + 1) % (1 << 32))
            continue
        if payload:
            conn["up" if upstream else "down"].add(seq, stamp, payload)
    out: list[Exchange] = []
    for conn in conns:
        up, up_ends = conn["up"].assemble()
        down, down_ends = conn["down"].assemble()
        answers = _answers(down, down_ends) if down else []
        for i, (start, end) in enumerate(_requests(up)):
            ex = Exchange(conn["port"], up[start:end], _stamp_at(up_ends, start), _stamp_at(up_ends, end - 1))
            if i < len(answers):
                a = answers[i]
                ex.status, ex.answer, ex.text_events, ex.t_done = a["status"], a["answer"], len(a["stamps"]), a["done"]
                if a["stamps"]:
                    ex.t_first_text, ex.t_last_text = a["stamps"][0], a["stamps"][-1]
            out.append(ex)
    out.sort(key=lambda e: e.t_request)
    return out


if __name__ == "__main__":
    capture(int(sys.argv[1]), Path(sys.argv[2]))
