"""WebSocket frames: decoding what clients send, encoding what the gateway itself answers.

Frames the gateway relays for workers and publishers arrive already encoded (see
``envelopes``) and are written verbatim; only ``$connected``, ``$pong`` and the
gateway's own ``$error`` frames are encoded here.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from wsq_gateway.errors import ErrorCode, FrameError

ACTION_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RESERVED_RE = re.compile(r"\$[A-Za-z0-9_.:-]{1,63}")
MAX_ID_LENGTH = 64
PING = "$ping"
FRAME_FIELDS = frozenset(("action", "data", "id"))


class ClientFrame(NamedTuple):
    action: str
    data: Any
    id: str | None


def decode_client_frame(text: str | bytes) -> ClientFrame:
    """Parse and validate one client frame; raise :class:`FrameError` when it is rejected."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if type(doc) is not dict:
        raise FrameError(ErrorCode.INVALID_FRAME, "frame must be a JSON object")

    frame_id = doc.get("id")
    if (frame_id is not None or "id" in doc) and (
        type(frame_id) is not str or not 0 < len(frame_id) <= MAX_ID_LENGTH
    ):  # "id": null too: the schema and the workers refuse it
        raise FrameError(ErrorCode.INVALID_FRAME, "id must be a string of 1 to 64 characters")
    if not FRAME_FIELDS.issuperset(doc):
        unknown = ", ".join(sorted(str(k) for k in doc if k not in FRAME_FIELDS))
        raise FrameError(ErrorCode.INVALID_FRAME, f"unknown field(s): {unknown}", frame_id)

    action = doc.get("action")
    if type(action) is not str:
        raise FrameError(ErrorCode.INVALID_FRAME, "action must be a string", frame_id)
    if ACTION_RE.fullmatch(action) is None:
        if action == PING:
            return ClientFrame(action, doc.get("data"), frame_id)
        if RESERVED_RE.fullmatch(action) is not None:
            raise FrameError(ErrorCode.RESERVED_ACTION, f"action {action} is reserved", frame_id)
        raise FrameError(
            ErrorCode.INVALID_FRAME,
            "action must be 1 to 64 letters, digits or _ . : -",
            frame_id,
        )
    return ClientFrame(action, doc.get("data"), frame_id)


def wire_text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked WebSocket text frame (RFC 6455 section 5.2), as a server
    sends it: the same bytes for every recipient, so a fan-out encodes it once."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


def _encode(action: str, data: Any, frame_id: str | None) -> bytes:
    if frame_id is None:
        return orjson.dumps({"action": action, "data": data})
    return orjson.dumps({"action": action, "data": data, "id": frame_id})


def connected_frame(connection_id: str, user_id: str | None) -> bytes:
    return _encode("$connected", {"connection_id": connection_id, "user_id": user_id}, None)


def pong_frame(data: Any, frame_id: str | None) -> bytes:
    return _encode("$pong", data, frame_id)


def error_frame(code: ErrorCode, message: str, frame_id: str | None = None) -> bytes:
    return _encode("$error", {"code": code.value, "message": message}, frame_id)
