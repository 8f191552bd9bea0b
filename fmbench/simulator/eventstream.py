"""An encoder of the AWS event-stream binary framing (``application/vnd.amazon.eventstream``).

The simulated server uses it to answer ``InvokeEndpointWithResponseStream`` and
``ConverseStream`` exactly as AWS does, so the real boto3 parser is what our tests exercise.
A message is::

    total length (u32) | headers length (u32) | CRC32 of the 8 bytes before (u32)
    headers            | payload              | CRC32 of everything before (u32)

and each header is ``name length (u8) | name | type (u8) | value``; only string values
(type 7: ``u16 length | UTF-8 bytes``) are needed here.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

_STRING = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
# Limits of the format (botocore rejects larger messages).
_MAX_HEADERS_LENGTH = 128 * 1024
_MAX_PAYLOAD_LENGTH = 16 * 1024 * 1024


def encode_headers(headers: dict[str, str]) -> bytes:
    """Encode string headers in the event-stream header format."""
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        if len(raw_name) > 255 or len(raw_value) > 0xFFFF:
            raise ValueError(f"event-stream header {name!r} is too long")
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One complete event-stream message, with prelude and message CRC32 checksums."""
    raw_headers = encode_headers(headers)
    if len(raw_headers) > _MAX_HEADERS_LENGTH or len(payload) > _MAX_PAYLOAD_LENGTH:
        raise ValueError("event-stream message too large")
    total = _PRELUDE.size + _CRC.size + len(raw_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(raw_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude) & 0xFFFFFFFF)
    body = head + raw_headers + payload
    return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def encode_event(event_type: str, payload: bytes, content_type: str = "application/octet-stream") -> bytes:
    """An ``event`` message (``:message-type`` event) of type ``event_type``."""
    return encode_message(
        {":event-type": event_type, ":content-type": content_type, ":message-type": "event"}, payload
    )


def encode_json_event(event_type: str, body: dict[str, Any]) -> bytes:
    """An event whose payload is a JSON object (Bedrock ConverseStream events)."""
    return encode_event(event_type, json.dumps(body, separators=(",", ":")).encode(), "application/json")


def encode_exception(exception_type: str, body: dict[str, Any]) -> bytes:
    """An ``exception`` message: a modelled error sent inside the stream (e.g. ModelStreamError)."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps(body, separators=(",", ":")).encode(),
    )
