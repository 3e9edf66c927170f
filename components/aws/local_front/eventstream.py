"""The event-stream framing of ``InvokeEndpointWithBidirectionalStream`` (sans-I/O)."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from smithy_aws_event_stream.events import Event, EventMessage

from components.aws.local_front.constants import MAX_EVENT_BYTES


class EventStreamBuffer:
    """Splits a byte stream into complete event-stream messages (sans-I/O)."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the raw encoded messages now complete."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 12:
            (total,) = struct.unpack_from("!I", self._buf, 0)
            if total < 16 or total > self._max:
                raise ValueError(f"invalid event-stream message length {total}")
            if len(self._buf) < total:
                break
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def decode_event(raw: bytes) -> Event:
    """Decode one complete event-stream message (checks both CRCs)."""
    event = Event.decode(io.BytesIO(raw))
    if event is None:
        raise ValueError("empty event-stream message")
    return event


def payload_part_event(data: bytes, *, text: bool, completion: str | None = None) -> bytes:
    """Encode one ``PayloadPart`` response event, as the service sends it."""
    headers: dict[str, Any] = {
        ":message-type": "event",
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        "DataType": "UTF8" if text else "BINARY",
    }
    if completion is not None:
        headers["CompletionState"] = completion
    return EventMessage(headers=headers, payload=data).encode()


def model_stream_error_event(code: str, message: str) -> bytes:
    """Encode the ``ModelStreamError`` exception event sent when the container closes."""
    return EventMessage(
        headers={
            ":message-type": "exception",
            ":exception-type": "ModelStreamError",
            ":content-type": "application/json",
        },
        payload=json.dumps({"Message": message, "ErrorCode": code}).encode(),
    ).encode()


def stream_failure_event(error_code: str, message: str) -> bytes:
    """Encode an unmodeled error event (used when an event's signature is wrong)."""
    return EventMessage(
        headers={
            ":message-type": "error",
            ":error-code": error_code,
            ":error-message": message,
        }
    ).encode()
