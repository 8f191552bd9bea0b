"""Our event-stream encoder, checked by decoding with botocore's own parser."""

from __future__ import annotations

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from fmbench.simulator.eventstream import encode_event, encode_exception, encode_json_event, encode_message


def _decode(data: bytes, step: int | None = None) -> list[tuple[dict[str, object], bytes]]:
    buf = EventStreamBuffer()
    out = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        buf.add_data(piece)
        out.extend((m.headers, m.payload) for m in buf)
    return out


def test_botocore_decodes_events_with_headers_and_payloads() -> None:
    data = (
        encode_event("PayloadPart", b'data:{"token":{"text":" hi"}}\n\n')
        + encode_json_event("metadata", {"usage": {"inputTokens": 3, "outputTokens": 2}})
        + encode_exception("ModelStreamError", {"Message": "boom", "ErrorCode": "E1"})
    )
    messages = _decode(data)
    assert messages[0] == (
        {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"},
        b'data:{"token":{"text":" hi"}}\n\n',
    )
    assert messages[1][0][":event-type"] == "metadata"
    assert messages[1][1] == b'{"usage":{"inputTokens":3,"outputTokens":2}}'
    assert messages[2][0] == {
        ":exception-type": "ModelStreamError",
        ":content-type": "application/json",
        ":message-type": "exception",
    }


def test_messages_fed_byte_by_byte_decode_identically() -> None:
    data = b"".join(encode_event("PayloadPart", f"part {i} ünï".encode()) for i in range(5))
    assert _decode(data, step=1) == _decode(data)
    assert [p for _, p in _decode(data, step=7)] == [f"part {i} ünï".encode() for i in range(5)]


def test_empty_payload_and_no_headers() -> None:
    assert _decode(encode_message({}, b"")) == [({}, b"")]


def test_corrupted_message_fails_botocore_checksum() -> None:
    data = bytearray(encode_event("PayloadPart", b"payload"))
    data[-6] ^= 0xFF  # flip a payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        _decode(bytes(data))


def test_oversized_header_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_message({"x": "y" * 70000}, b"")
