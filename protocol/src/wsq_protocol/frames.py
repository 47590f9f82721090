"""WebSocket frames: decoding what clients send, encoding what servers send.

Client frames (``schemas/client-frame.schema.json``) are decoded by the gateway, which
rejects a bad one with a :class:`~wsq_protocol.errors.FrameError` carrying its error code,
and again by workers, inside the message events they read. Server frames
(``schemas/server-frame.schema.json``) are encoded once, here, by whoever sends them: the
gateway its ``$connected``, ``$pong`` and ``$error``; workers and publishers their pushes,
replies and errors. Gateways then write them to the sockets verbatim.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from wsq_protocol import codec
from wsq_protocol.codes import ERROR_CODES, MAX_ID_LENGTH, ErrorCode
from wsq_protocol.errors import FrameError
from wsq_protocol.history import parse_request
from wsq_protocol.ids import (
    ACTION_RE,
    CONNECTION_ID_RE,
    HISTORY,
    PING,
    RESERVED_RE,
    check_action,
    check_frame_id,
    user_id_problem,
)

__all__ = [
    "FRAME_INVALID",
    "FRAME_NOT_JSON",
    "ClientFrame",
    "checked_reply_frame",
    "connected_frame",
    "decode_client_frame",
    "encode_error_frame",
    "history_frame",
    "pong_frame",
    "push_frame",
    "reply_frame",
    "server_frame_problem",
    "with_seq",
]

_FRAME_FIELDS = frozenset(("action", "data", "id"))
_GATEWAY_ACTIONS = frozenset(("$connected", "$error", "$pong", HISTORY))
_PAGE_FIELDS = frozenset(("messages", "complete", "gap"))
_ERROR_FIELDS = frozenset(("code", "message"))
_STAMPED_FIELDS = frozenset(("action", "data", "id", "seq"))
_CONNECTED_FIELDS = frozenset(("connection_id", "user_id"))

FRAME_NOT_JSON = "frame_not_json"
"""``server_frame_problem``'s reason for a frame that is not JSON text (nor UTF-8)."""
FRAME_INVALID = "frame_invalid"
"""``server_frame_problem``'s reason for JSON that is not a server frame."""


class ClientFrame(NamedTuple):
    action: str
    data: Any
    id: str | None


def decode_client_frame(text: str | bytes) -> ClientFrame:
    """Parse and validate one client frame; raise :class:`FrameError` when it is rejected (a
    ``$history`` frame's data too: ``invalid_data``, see ``wsq_protocol.history.parse_request``)."""
    try:
        doc = codec.loads(text)
    except ValueError:  # UnicodeDecodeError too: bytes that are not UTF-8
        raise FrameError(ErrorCode.INVALID_JSON, "frame is not valid JSON") from None
    if type(doc) is not dict:
        raise FrameError(ErrorCode.INVALID_FRAME, "frame must be a JSON object")

    frame_id = doc.get("id")
    if frame_id is None and "id" in doc:  # the schema and the workers refuse it
        raise FrameError(ErrorCode.INVALID_FRAME, "the frame id is null: give a string or no id")
    if frame_id is not None and (type(frame_id) is not str or not 0 < len(frame_id) <= MAX_ID_LENGTH):
        raise FrameError(ErrorCode.INVALID_FRAME, f"id must be a string of 1 to {MAX_ID_LENGTH} characters")
    if not _FRAME_FIELDS.issuperset(doc):
        unknown = ", ".join(sorted(str(k) for k in doc if k not in _FRAME_FIELDS))
        raise FrameError(ErrorCode.INVALID_FRAME, f"unknown field(s): {unknown}", frame_id)

    action = doc.get("action")
    if type(action) is not str:
        raise FrameError(ErrorCode.INVALID_FRAME, "action must be a string", frame_id)
    if ACTION_RE.fullmatch(action) is None:
        if action == PING:
            return ClientFrame(action, doc.get("data"), frame_id)
        if action == HISTORY:  # answered by the gateway: its data is checked here
            try:
                parse_request(doc.get("data"))
            except ValueError as exc:
                raise FrameError(ErrorCode.INVALID_DATA, str(exc), frame_id) from None
            return ClientFrame(action, doc.get("data"), frame_id)
        if RESERVED_RE.fullmatch(action) is not None:
            raise FrameError(ErrorCode.RESERVED_ACTION, f"action {action} is reserved", frame_id)
        raise FrameError(
            ErrorCode.INVALID_FRAME,
            "action must be 1 to 64 letters, digits or _ . : -",
            frame_id,
        )
    return ClientFrame(action, doc.get("data"), frame_id)


def _encode(action: str, data: Any, frame_id: str | None) -> bytes:
    if frame_id is None:
        return codec.dumps_utf8({"action": action, "data": data})
    return codec.dumps_utf8({"action": action, "data": data, "id": frame_id})


def connected_frame(
    connection_id: str,
    user_id: str | None,
    *,
    resume_token: str | None = None,
    resume_window_s: float | None = None,
    resumed: bool | None = None,
    recovered: bool | None = None,
) -> bytes:
    """``$connected``: the first frame of every connection (of every socket of a resumed one).

    With resume on (``WSQ_RESUME_WINDOW_S``), ``resume_token`` and ``resume_window_s`` say how
    to come back; after a resume request, ``resumed`` says whether the session was found
    (same connection id, user and groups) and ``recovered`` whether every frame sent since
    the client's ``after`` follows, in order (protocol/README.md, "Session resume")."""
    data: dict[str, Any] = {"connection_id": connection_id, "user_id": user_id}
    if resume_token is not None:
        data["resume_token"] = resume_token
        data["resume_window_s"] = resume_window_s
    if resumed is not None:
        data["resumed"] = resumed
        data["recovered"] = bool(recovered)
    return _encode("$connected", data, None)


def with_seq(frame: bytes, seq: int) -> bytes:
    """``frame`` (a server frame's JSON object text) with ``"seq": seq`` as its last field: the
    per-connection sequence number a resumable connection's frames carry."""
    if frame[-1:] != b"}":  # JSON text may end in whitespace (a publisher's); ours never does
        frame = frame.rstrip()
    return b'%s,"seq":%d}' % (memoryview(frame)[:-1], seq)  # one copy of the frame, not two


def pong_frame(data: Any, frame_id: str | None) -> bytes:
    """``$pong``: the gateway's answer to ``$ping``, with the ping's data and id."""
    return _encode("$pong", data, frame_id)


def history_frame(page: dict[str, Any], frame_id: str | None) -> bytes:
    """``$history``: the gateway's answer to ``$history``, one page of a group's history
    (``wsq_protocol.history.HistoryPage.as_json()``), with the request's id."""
    return _encode(HISTORY, page, frame_id)


def encode_error_frame(code: str, message: str, frame_id: str | None = None) -> bytes:
    """``{"action": "$error", "data": {"code", "message"}[, "id"]}`` in UTF-8; ValueError for a
    code not in :class:`~wsq_protocol.codes.ErrorCode`, TypeError for a message not a str."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, not {type(message).__name__}")
    return _encode("$error", {"code": str(code), "message": message}, frame_id)


def push_frame(action: str, data: Any = None) -> str:
    """``{"action", "data"}``: a push from a worker or publisher.

    Raises ValueError for a malformed action name and TypeError (or ValueError) for data
    that JSON can't encode.
    """
    return codec.dumps({"action": check_action(action), "data": data})


def reply_frame(action: str, data: Any, id: str) -> str:
    """``{"action", "data", "id"}``: the answer to the client frame that carried ``id``."""
    return checked_reply_frame(check_action(action), data, check_frame_id(id)).decode()


def checked_reply_frame(action: str, data: Any, id: str) -> bytes:
    """``reply_frame()`` in UTF-8, for an ``action`` and ``id`` checked already (a decoded
    event's): the worker's hot path. Raises TypeError or ValueError when ``data`` can't be
    encoded, a str that is not UTF-8 included."""
    return codec.dumps_utf8({"action": action, "data": data, "id": id})


def server_frame_problem(frame: bytes | str, *, stamped: bool = False) -> tuple[str, str] | None:
    """None when ``frame`` is a server frame (``schemas/server-frame.schema.json``), else
    ``(reason, message)``: reason :data:`FRAME_NOT_JSON` or :data:`FRAME_INVALID`. Its ``seq``
    is the gateway's own: allowed only when ``stamped`` (a frame relayed by a session's home
    gateway), and then required.

    What gateways check of a ``send`` command's frame before writing it to sockets: one JSON
    parse and a few type checks (the ``data`` of a push is not looked into).
    """
    try:
        doc = codec.loads(frame)
    except ValueError:  # UnicodeDecodeError too: bytes that are not UTF-8
        return FRAME_NOT_JSON, "frame is not valid JSON"
    if type(doc) is not dict:
        return FRAME_INVALID, "frame is not a JSON object"
    if stamped:
        seq = doc.get("seq")
        if type(seq) is not int or seq < 1 or "data" not in doc or not _STAMPED_FIELDS.issuperset(doc):
            return FRAME_INVALID, 'a relayed frame needs "action", "data" and "seq", and may have "id"'
        doc = {key: value for key, value in doc.items() if key != "seq"}
    if "data" not in doc or not _FRAME_FIELDS.issuperset(doc):
        return FRAME_INVALID, 'frame needs "action" and "data", and may have "id", nothing else'
    action = doc.get("action")
    if type(action) is not str:
        return FRAME_INVALID, "action is missing or not a string"
    if "id" in doc:
        frame_id = doc["id"]
        if type(frame_id) is not str or not 0 < len(frame_id) <= MAX_ID_LENGTH:
            return FRAME_INVALID, f"id is not a string of 1 to {MAX_ID_LENGTH} characters"
    if ACTION_RE.fullmatch(action) is not None:
        return None
    if action not in _GATEWAY_ACTIONS:
        return (
            FRAME_INVALID,
            "action is not 1 to 64 letters, digits or _ . : - (nor $connected, $error, $pong, $history)",
        )
    data = doc["data"]
    if action == "$error":
        if (
            type(data) is not dict
            or data.keys() != _ERROR_FIELDS
            or data["code"] not in ERROR_CODES
            or type(data["message"]) is not str
        ):
            return FRAME_INVALID, "an $error's data is not {code, message} with a known code"
    elif action == "$connected" and (
        "id" in doc
        or type(data) is not dict
        or data.keys() != _CONNECTED_FIELDS
        or type(data["connection_id"]) is not str
        or CONNECTION_ID_RE.fullmatch(data["connection_id"]) is None
        or (data["user_id"] is not None and user_id_problem(data["user_id"]) is not None)
    ):
        return FRAME_INVALID, "a $connected's data is not {connection_id, user_id}"
    elif action == HISTORY and (
        type(data) is not dict
        or data.keys() != _PAGE_FIELDS
        or type(data["messages"]) is not list
        or type(data["complete"]) is not bool
        or type(data["gap"]) is not bool
    ):
        return FRAME_INVALID, "a $history's data is not {messages, complete, gap}"
    return None
