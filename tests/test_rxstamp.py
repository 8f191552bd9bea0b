"""`fmbench.rxstamp`: a kernel receive stamp is converted to ``time.monotonic()`` with an offset that
follows a stepped wall clock at once, and is used only where it is believable."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from fmbench import rxstamp
from fmbench.rxstamp import RxStampSocket, arrival_time, realtime_offset


class _Stamped:
    """Stands in for an `RxStampSocket` whose last read carried ``rx_ns``."""

    def __init__(self, rx_ns: int) -> None:
        self.rx_ns = rx_ns


def _ns(monotonic: float) -> int:
    return round((monotonic + realtime_offset(time.monotonic())) * 1e9)


def test_a_stepped_wall_clock_is_measured_again_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.monotonic()
    before = realtime_offset(now)
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + 5.0)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + 5_000_000_000)
    # well within the second the offset is otherwise kept for
    assert realtime_offset(now + 0.001) == pytest.approx(before + 5.0, abs=0.001)


def test_a_stamp_is_used_only_where_it_is_believable() -> None:
    now = time.monotonic()
    kernel = now - 0.010
    assert arrival_time(_Stamped(_ns(kernel)), now) == pytest.approx(kernel, abs=1e-4)  # type: ignore[arg-type]
    # no stamp, or none of this read: the time the read was handled
    assert arrival_time(None, now) == now
    assert arrival_time(_Stamped(0), now) == now  # type: ignore[arg-type]
    # not after the read was handled, not before the caller knows the bytes came, not stale
    assert arrival_time(_Stamped(_ns(now + 0.010)), now) == now  # type: ignore[arg-type]
    assert arrival_time(_Stamped(_ns(kernel)), now, floor=now - 0.005) == now  # type: ignore[arg-type]
    stale = now - rxstamp.MAX_STAMP_AGE_S - 0.5
    assert arrival_time(_Stamped(_ns(stale)), now) == now  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel receive stamps are Linux's")
def test_the_wrapped_socket_reads_and_stamps_and_forwards_everything_else() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    with server, client, conn:
        conn.setsockopt(socket.SOL_SOCKET, rxstamp.SO_TIMESTAMPNS, 1)
        wrapped = RxStampSocket(conn)
        # The kernel turns receive stamps on for the whole machine lazily: a segment that arrives
        # right after the first socket asked for them may carry none (the read is then unstamped,
        # and its caller falls back to the time it read). Later ones do.
        for _ in range(20):
            before = time.time_ns()
            client.sendall(b"hello")
            time.sleep(0.05)
            assert wrapped.recv(100) == b"hello"
            if wrapped.rx_ns:
                break
        assert before <= wrapped.rx_ns <= time.time_ns() - 40_000_000  # when it arrived, not when read
        assert wrapped.send(b"back") == 4 and client.recv(100) == b"back"
        assert wrapped.fileno() == conn.fileno()
