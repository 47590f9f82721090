"""The wsq wire protocol, version 1 (protocol/README.md), as the SDK's public module.

Everything here is the protocol core's (``wsq_protocol``, shared with the gateway): decoding
inbound events (gateway -> workers), encoding outbound commands and server frames (workers and
publishers -> gateways). Commands are flat maps of strings, ready for ``XADD``; frames are JSON
text, encoded once and written verbatim to the sockets by the gateway.
"""

from __future__ import annotations

from wsq_protocol.codes import ERROR_CODES, MAX_ATTEMPT, MAX_USER_ID_BYTES, PROTOCOL_VERSION, ErrorCode
from wsq_protocol.commands import (
    TargetKind,
    accept_command,
    disconnect_command,
    join_command,
    leave_command,
    refuse_command,
    send_command,
)
from wsq_protocol.events import Event, EventType, Request, decode_event, text_fields
from wsq_protocol.frames import checked_reply_frame, encode_error_frame, push_frame, reply_frame
from wsq_protocol.ids import (
    check_close,
    check_frame_id,
    check_group,
    check_user_id,
    is_action_name,
    is_group_name,
    node_of,
)

__all__ = [
    "ERROR_CODES",
    "HANDLER_ERROR",
    "HANDLER_FAILED",
    "INVALID_FRAME",
    "INVALID_JSON",
    "MAX_ATTEMPT",
    "MAX_USER_ID_BYTES",
    "NOT_TAKEN",
    "NO_WORKERS",
    "OVERLOADED",
    "PROTOCOL_VERSION",
    "RATE_LIMITED",
    "RESERVED_ACTION",
    "UNAVAILABLE",
    "UNKNOWN_ACTION",
    "Event",
    "EventType",
    "Request",
    "TargetKind",
    "accept_command",
    "check_close",
    "check_group",
    "check_user_id",
    "checked_reply_frame",
    "decode_event",
    "disconnect_command",
    "error_frame",
    "is_action_name",
    "is_group_name",
    "join_command",
    "leave_command",
    "node_of",
    "push_frame",
    "refuse_command",
    "reply_frame",
    "send_command",
    "text_fields",
]

# Error codes of $error frames, as plain str. The gateway sends these eight...
INVALID_JSON = ErrorCode.INVALID_JSON.value
INVALID_FRAME = ErrorCode.INVALID_FRAME.value
RESERVED_ACTION = ErrorCode.RESERVED_ACTION.value
UNAVAILABLE = ErrorCode.UNAVAILABLE.value
OVERLOADED = ErrorCode.OVERLOADED.value
RATE_LIMITED = ErrorCode.RATE_LIMITED.value
NO_WORKERS = ErrorCode.NO_WORKERS.value
NOT_TAKEN = ErrorCode.NOT_TAKEN.value
# ...and workers these three.
UNKNOWN_ACTION = ErrorCode.UNKNOWN_ACTION.value
HANDLER_ERROR = ErrorCode.HANDLER_ERROR.value
HANDLER_FAILED = ErrorCode.HANDLER_FAILED.value


def error_frame(code: str, message: str, id: str | None = None) -> str:
    """``{"action": "$error", "data": {"code", "message"}[, "id"]}``; ValueError for an unknown
    code or a malformed id."""
    return encode_error_frame(code, message, None if id is None else check_frame_id(id)).decode()
