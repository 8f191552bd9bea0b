"""The loopback packet capture of ``benchmarks._wire``: the ground truth of benchmark 6 (a real
llama.cpp server), so it is checked against a server whose every send is stamped by the test.

Capturing needs root or ``CAP_NET_RAW``: without it the test skips locally and fails under ``CI``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from benchmarks._wire import Capture


def _capture(port: int, path: Path) -> Capture:
    try:
        return Capture(port, path).__enter__()
    except PermissionError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _event(text: str | None) -> bytes:
    delta = {"role": "assistant"} if text is None else {"content": text}
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _request(body: bytes) -> tuple[bytes, bytes]:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    return head, body


def test_each_exchange_is_timed_by_the_segments_that_carried_it(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sent: dict[str, int] = {}  # the server's wall-clock stamps just before each send
    cap = _capture(port, tmp_path / "wire.bin")

    def serve() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n in (1, 2):  # two requests on one keep-alive connection
            buf = b""
            while b"\r\n\r\n" not in buf or not buf.endswith(b"}"):
                buf += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(_event(None)))
            time.sleep(0.05)
            first = _chunk(_event(f"first {n}"))
            sent[f"first{n}"] = time.time_ns()
            conn.sendall(first[:20])  # the event's end comes in the next segment
            time.sleep(0.02)
            sent[f"first{n}_end"] = time.time_ns()
            conn.sendall(first[20:])
            time.sleep(0.03)
            sent[f"last{n}"] = time.time_ns()
            conn.sendall(_chunk(_event(f"last {n}")))
            time.sleep(0.01)
            sent[f"done{n}"] = time.time_ns()
            conn.sendall(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        conn.close()
        unanswered, _ = listener.accept()  # read, closed without an answer
        unanswered.recv(65536)
        unanswered.close()

    server = threading.Thread(target=serve)
    server.start()
    try:
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for n in (1, 2):
            head, body = _request(json.dumps({"n": n}).encode())
            sent[f"request{n}"] = time.time_ns()
            client.sendall(head)
            time.sleep(0.01)  # the body in a second segment
            client.sendall(body)
            answer = b""
            while not answer.endswith(b"0\r\n\r\n"):
                answer += client.recv(65536)
        client.close()
        other = socket.create_connection(("127.0.0.1", port))
        other.sendall(b"".join(_request(b'{"n": 3}')))
        assert other.recv(100) == b""
        other.close()
        server.join(10)
    finally:
        cap.__exit__()
        listener.close()
    exchanges = cap.exchanges()
    assert [json.loads(e.request.split(b"\r\n\r\n")[1])["n"] for e in exchanges] == [1, 2, 3]
    for n, ex in zip((1, 2), exchanges, strict=False):
        assert ex.status == 200 and ex.text_events == 2
        # each stamp is of the segment that completed the event: after the server's stamp before
        # that send, and before its next send
        assert sent[f"request{n}"] <= ex.t_request < ex.t_request_end
        assert sent[f"first{n}_end"] <= ex.t_first_text < sent[f"last{n}"]
        assert sent[f"last{n}"] <= ex.t_last_text < sent[f"done{n}"] <= ex.t_done
        # the request's end is its body, sent 10 ms after its head
        assert ex.t_request_end - ex.t_request >= 9_000_000
    assert exchanges[2].status is None and exchanges[2].t_first_text is None and exchanges[2].t_done is None
