"""The wsq wire protocol, version 1 (protocol/README.md), without any I/O.

Decodes inbound events (gateway -> workers) and encodes outbound commands and server frames
(workers and publishers -> gateways). Commands are flat maps of strings, ready for ``XADD``;
frames are JSON text, encoded once here and written verbatim to the sockets by the gateway.
"""

from __future__ import annotations

import http.cookies
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

from wsq_worker import codec
from wsq_worker.exceptions import ProtocolError

__all__ = [
    "ERROR_CODES",
    "HANDLER_ERROR",
    "HANDLER_FAILED",
    "INVALID_FRAME",
    "INVALID_JSON",
    "MAX_ATTEMPT",
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

PROTOCOL_VERSION = "1"
MAX_ATTEMPT = 9999
"""The largest ``attempt`` a message event can carry (four digits, schemas/event.schema.json)."""

# Error codes of $error frames. The gateway sends these seven...
INVALID_JSON = "invalid_json"
INVALID_FRAME = "invalid_frame"
RESERVED_ACTION = "reserved_action"
UNAVAILABLE = "unavailable"
OVERLOADED = "overloaded"
RATE_LIMITED = "rate_limited"
NO_WORKERS = "no_workers"
# ...and workers these three.
UNKNOWN_ACTION = "unknown_action"
HANDLER_ERROR = "handler_error"
HANDLER_FAILED = "handler_failed"
ERROR_CODES = frozenset(
    {
        INVALID_JSON,
        INVALID_FRAME,
        RESERVED_ACTION,
        UNAVAILABLE,
        OVERLOADED,
        RATE_LIMITED,
        NO_WORKERS,
        UNKNOWN_ACTION,
        HANDLER_ERROR,
        HANDLER_FAILED,
    }
)

EventType: TypeAlias = Literal["connect", "message", "disconnect"]
TargetKind: TypeAlias = Literal["connection", "user", "group", "all"]

_EVENT_TYPES: frozenset[str] = frozenset({"connect", "message", "disconnect"})
_TARGETS: frozenset[str] = frozenset({"connection", "user", "group", "all"})
_EVENT_FIELDS = frozenset(
    {
        "v",
        "type",
        "connection_id",
        "node",
        "user_id",
        "ts",
        "addr",
        "frame",
        "close_code",
        "attempt",
        "hook",
        "request",
    }
)
_MESSAGE_FIELDS = _EVENT_FIELDS - {"close_code", "hook", "request"}
_FAST_MESSAGE_FIELDS = frozenset(name.encode() for name in _MESSAGE_FIELDS - {"attempt"})
_CLIENT_FRAME_FIELDS = frozenset({"action", "data", "id"})
_PING = "$ping"
_PROTOCOL_VERSION_BYTES = PROTOCOL_VERSION.encode()

# Patterns from the schemas. Every one is used with fullmatch(), and [0-9] is ASCII only.
_ACTION = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_GROUP = re.compile(r"[A-Za-z0-9_.:@/-]{1,128}")
_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONNECTION_ID = re.compile(r"([A-Za-z0-9_-]{1,64})\.[A-Za-z0-9_-]{22}")
_TS = re.compile(r"[0-9]{1,16}")
# The same patterns over bytes, for the message events read from Redis (decode_event's fast path).
_NODE_BYTES = re.compile(_NODE.pattern.encode())
_CONNECTION_ID_BYTES = re.compile(_CONNECTION_ID.pattern.encode())
_TS_BYTES = re.compile(_TS.pattern.encode())
_CLOSE_CODE = re.compile(r"[0-9]{1,4}")
_ATTEMPT = re.compile(r"[1-9][0-9]{0,3}")
_HOOK = "1"
_REQUEST_FIELDS = frozenset({"path", "query", "headers"})
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_MAX_ID_LENGTH = 64
_MAX_REASON_BYTES = 123


@dataclass(frozen=True, slots=True)
class Request:
    """The HTTP request that opened a connection, as its connect event carries it.

    ``headers`` holds only the headers the gateway forwards (``WSQ_FORWARD_HEADERS``, by
    default ``cookie``), by lower-case name.
    """

    path: str
    query_string: str
    """The raw query string, without ``?``."""
    headers: Mapping[str, str]

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, decoded (a repeated name keeps its last value)."""
        return dict(urllib.parse.parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies of the ``cookie`` header (empty when the gateway does not forward it)."""
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except http.cookies.CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}


class Event(NamedTuple):
    """One entry of the inbound stream.

    ``action``, ``data`` and ``id`` come from the client's frame (message events only);
    ``close_code`` is set for disconnect events only. ``attempt`` is the event's own count (a
    message re-queued by ``Retry`` carries the next one; 1 otherwise), not counting redeliveries
    after a worker died; ``hook`` (connect events only) says the gateway holds the connection until
    a worker answers with an accept or refuse command; ``request`` (connect events) is the HTTP
    request that opened the connection.
    """

    type: EventType
    connection_id: str
    node: str
    user_id: str | None
    ts: int
    """When the gateway received it, in milliseconds since the Unix epoch."""
    addr: str
    action: str | None = None
    data: Any = None
    id: str | None = None
    close_code: int | None = None
    attempt: int = 1
    hook: bool = False
    request: Request | None = None


def is_action_name(name: object) -> bool:
    """Whether ``name`` is a valid (non-reserved) action: 1-64 letters, digits, ``_ . : -``."""
    return isinstance(name, str) and _ACTION.fullmatch(name) is not None


def is_group_name(name: object) -> bool:
    """Whether ``name`` is a valid group: 1-128 letters, digits or ``_ . : @ / -``."""
    return isinstance(name, str) and _GROUP.fullmatch(name) is not None


def check_group(group: str) -> str:
    """``group``, or ValueError when it is not a valid group name."""
    if not is_group_name(group):
        raise ValueError(f"a group name is 1-128 letters, digits or _ . : @ / -, not {group!r}")
    return group


def node_of(connection_id: str) -> str:
    """The node id of the gateway holding ``connection_id`` (the text before its last dot)."""
    match = _CONNECTION_ID.fullmatch(connection_id) if isinstance(connection_id, str) else None
    if match is None:
        raise ValueError(f"not a wsq connection id: {connection_id!r}")
    return match.group(1)


def _text(value: str | bytes, what: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


def text_fields(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, str]:
    """A stream entry's field map as ``str`` (Redis replies are ``bytes`` unless decoded).

    Raises ``ProtocolError`` when a name or value is not valid UTF-8.
    """
    try:  # the usual case, in one pass: every name and value bytes, and valid UTF-8
        return {key.decode(): value.decode() for key, value in fields.items()}  # type: ignore[union-attr]
    except (AttributeError, UnicodeDecodeError):
        pass
    text: dict[str, str] = {}
    for raw_key, raw_value in fields.items():
        key = _text(raw_key, "a field name")
        text[key] = _text(raw_value, f"field {key!r}")
    return text


def decode_event(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Event:
    """Decode the field map of an inbound stream entry (``bytes`` or ``str`` keys and values).

    Raises ``ProtocolError`` when it does not follow schemas/event.schema.json, including a
    ``frame`` that is not a valid client frame.
    """
    if fields.get(b"type") == b"message":  # type: ignore[call-overload]
        message = _message_event(fields)  # type: ignore[arg-type]
        if message is not None:
            return message
    event = text_fields(fields)
    if not _EVENT_FIELDS.issuperset(event):
        unknown = next(key for key in event if key not in _EVENT_FIELDS)
        raise ProtocolError(f"unknown event field {unknown!r}")

    version = event.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r} (expected {PROTOCOL_VERSION!r})")
    event_type = event.get("type")
    if event_type not in _EVENT_TYPES:
        raise ProtocolError(f"unknown event type {event_type!r}")
    connection_id = _required(event, "connection_id", _CONNECTION_ID)
    node = _required(event, "node", _NODE)
    ts = int(_required(event, "ts", _TS))
    user_id = event.get("user_id")
    addr = event.get("addr", "")
    if event_type == "message" and _MESSAGE_FIELDS.issuperset(event):  # the hot path: one check
        frame = event.get("frame")
        if frame is None:
            raise ProtocolError("a message event needs a frame")
        attempt = int(_required(event, "attempt", _ATTEMPT)) if "attempt" in event else 1
        action, data, frame_id = _decode_client_frame(frame)
        return Event(
            "message", connection_id, node, user_id, ts, addr, action, data, frame_id, attempt=attempt
        )
    for name in ("hook", "request"):
        if name in event and event_type != "connect":
            raise ProtocolError(f"a {event_type} event has no {name}")
    if event_type == "message":
        raise ProtocolError("a message event has no close_code")
    if "frame" in event:
        raise ProtocolError(f"a {event_type} event has no frame")
    if "attempt" in event:
        raise ProtocolError(f"a {event_type} event has no attempt")
    if event_type == "disconnect":
        close_code = int(_required(event, "close_code", _CLOSE_CODE))
        return Event("disconnect", connection_id, node, user_id, ts, addr, close_code=close_code)
    if "close_code" in event:
        raise ProtocolError("a connect event has no close_code")
    hook = event.get("hook")
    if hook is not None and hook != _HOOK:
        raise ProtocolError(f"malformed event field 'hook': {hook!r}")
    request = _decode_request(event["request"]) if "request" in event else None
    return Event("connect", connection_id, node, user_id, ts, addr, hook=hook is not None, request=request)


def _message_event(fields: Mapping[bytes, bytes]) -> Event | None:
    """The hot path of ``decode_event``: a message event as the gateway writes it, read from
    Redis as bytes, checked without decoding every field first. None for anything else (an
    ``attempt``, a missing or malformed field): the general path then decodes it, or says
    what is wrong with it."""
    connection_id = fields.get(b"connection_id")
    node = fields.get(b"node")
    ts = fields.get(b"ts")
    frame = fields.get(b"frame")
    if (
        fields.get(b"v") != _PROTOCOL_VERSION_BYTES
        or not _FAST_MESSAGE_FIELDS.issuperset(fields)
        or connection_id is None
        or node is None
        or ts is None
        or frame is None
        or _CONNECTION_ID_BYTES.fullmatch(connection_id) is None
        or _NODE_BYTES.fullmatch(node) is None
        or _TS_BYTES.fullmatch(ts) is None
    ):
        return None
    user_id = fields.get(b"user_id")
    addr = fields.get(b"addr")
    try:
        text = frame.decode()
        user_text = None if user_id is None else user_id.decode()
        addr_text = "" if addr is None else addr.decode()
        action, data, frame_id = _decode_client_frame(text)
    except (UnicodeDecodeError, ProtocolError):
        return None
    # The patterns matched ASCII only: these decodes can't fail.
    connection_text, node_text = connection_id.decode(), node.decode()
    return Event("message", connection_text, node_text, user_text, int(ts), addr_text, action, data, frame_id)


def _decode_request(text: str) -> Request:
    """A connect event's ``request`` field (event.schema.json, ``$defs/request``)."""
    doc = _json(text, "event field 'request'")
    if not isinstance(doc, dict) or doc.keys() != _REQUEST_FIELDS:
        raise ProtocolError("event field 'request' must be an object with path, query and headers")
    path, query, headers = doc["path"], doc["query"], doc["headers"]
    if not isinstance(path, str) or not isinstance(query, str) or not isinstance(headers, dict):
        raise ProtocolError("event field 'request' has a malformed path, query or headers")
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not isinstance(value, str):
            raise ProtocolError(f"event field 'request' has a malformed header {name!r}")
    return Request(path, query, headers)


def _required(event: Mapping[str, str], name: str, pattern: re.Pattern[str]) -> str:
    value = event.get(name)
    if value is None:
        raise ProtocolError(f"missing event field {name!r}")
    if pattern.fullmatch(value) is None:
        raise ProtocolError(f"malformed event field {name!r}: {value!r}")
    return value


def _decode_client_frame(text: str) -> tuple[str, Any, str | None]:
    """(action, data, id) of a client frame (schemas/client-frame.schema.json)."""
    frame = _json(text, "the frame")
    if not isinstance(frame, dict):
        raise ProtocolError("the frame is not a JSON object")
    if not _CLIENT_FRAME_FIELDS.issuperset(frame):
        unknown = frame.keys() - _CLIENT_FRAME_FIELDS
        raise ProtocolError(f"unknown frame field(s): {', '.join(sorted(unknown))}")
    action = frame.get("action")
    if not isinstance(action, str) or not (action == _PING or _ACTION.fullmatch(action)):
        raise ProtocolError(f"malformed frame action: {action!r}")
    frame_id = frame.get("id")
    if frame_id is not None and not _is_frame_id(frame_id):
        raise ProtocolError(f"malformed frame id: {frame_id!r}")
    if "id" in frame and frame_id is None:
        raise ProtocolError("the frame id is null")
    return action, frame.get("data"), frame_id


def _json(text: str, what: str) -> Any:
    try:
        return codec.loads(text)
    except ValueError:
        raise ProtocolError(f"{what} is not valid JSON") from None


def _is_frame_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= _MAX_ID_LENGTH


# Outbound commands: schemas/command.schema.json. Field order follows the golden examples.


def send_command(
    target: TargetKind, to: str | None, frame: str, exclude: str | None = None
) -> dict[str, str]:
    """A ``send`` command writing ``frame`` (server-frame JSON text) to the targeted sockets.

    ``to`` is the connection id (``target="connection"``), the user id (``"user"``) or the
    group (``"group"``), and must be None for ``"all"``. ``exclude`` (groups only) is a
    connection id that must not receive the frame.
    """
    fields = {"v": PROTOCOL_VERSION, "type": "send", "target": _check_target(target, to)}
    if to is not None:
        fields["to"] = to
    if exclude is not None:
        if target != "group":
            raise ValueError(f'exclude is only for target "group", not "{target}"')
        node_of(exclude)
        fields["exclude"] = exclude
    fields["frame"] = frame
    return fields


def disconnect_command(
    target: TargetKind, to: str | None, code: int = 1000, reason: str = ""
) -> dict[str, str]:
    """A ``disconnect`` command closing the targeted sockets with ``code`` (1000 or 3000-4999).

    ``target`` and ``to`` as for ``send_command``; ``reason`` is at most 123 bytes of UTF-8.
    """
    check_close(code, reason)
    fields = {"v": PROTOCOL_VERSION, "type": "disconnect", "target": _check_target(target, to)}
    if to is not None:
        fields["to"] = to
    fields["code"] = str(int(code))  # int(): an enum of the app's may print its name
    fields["reason"] = reason
    return fields


def accept_command(connection_id: str, user_id: str | None = None) -> dict[str, str]:
    """An ``accept`` command: the answer to a connect event with ``hook``; the gateway sends
    ``$connected``. With ``user_id`` the connection takes that user id, else it keeps its own."""
    node_of(connection_id)
    fields = {"v": PROTOCOL_VERSION, "type": "accept", "target": "connection", "to": connection_id}
    if user_id is not None:
        fields["user_id"] = check_user_id(user_id)
    return fields


def refuse_command(connection_id: str, code: int = 4003, reason: str = "") -> dict[str, str]:
    """A ``refuse`` command: the answer to a connect event with ``hook``; the gateway closes the
    socket with ``code`` (1000 or 3000-4999) and ``reason`` (at most 123 bytes of UTF-8)."""
    check_close(code, reason)
    node_of(connection_id)
    return {
        "v": PROTOCOL_VERSION,
        "type": "refuse",
        "target": "connection",
        "to": connection_id,
        "code": str(int(code)),
        "reason": reason,
    }


def check_close(code: int, reason: str) -> None:
    """ValueError unless ``code`` is 1000 or 3000-4999 and ``reason`` at most 123 bytes of UTF-8
    (TypeError when ``reason`` is not a str)."""
    if isinstance(code, bool) or not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
        raise ValueError(f"close code must be 1000 or 3000-4999, not {code!r}")
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, not {type(reason).__name__}")
    if len(reason.encode()) > _MAX_REASON_BYTES:
        raise ValueError(f"close reason is longer than {_MAX_REASON_BYTES} bytes of UTF-8")


MAX_USER_ID_BYTES = 256
# C0 and C1 control characters and DEL: they have no place in an id that logs and keys show.
_CONTROL_CHARACTER_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_user_id(user_id: str) -> str:
    """``user_id``, or ValueError when it is not 1 to 256 bytes of UTF-8 without control
    characters (Redis keys and stream fields are bytes: a lone surrogate has none). The gateway
    applies the same rule to a token's ``sub`` (HTTP 401) and to a connect hook's user id."""
    if (
        not isinstance(user_id, str)
        or not user_id
        or not _is_utf8(user_id)
        or len(user_id.encode()) > MAX_USER_ID_BYTES
        or _CONTROL_CHARACTER_RE.search(user_id)
    ):
        raise ValueError(
            f"a user id is 1-{MAX_USER_ID_BYTES} bytes of UTF-8 without control characters, not {user_id!r}"
        )
    return user_id


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def join_command(connection_id: str, group: str) -> dict[str, str]:
    """A ``join`` command: the gateway holding ``connection_id`` adds it to its index of ``group``."""
    return _membership_command("join", connection_id, group)


def leave_command(connection_id: str, group: str) -> dict[str, str]:
    """A ``leave`` command: the gateway holding ``connection_id`` removes it from ``group``."""
    return _membership_command("leave", connection_id, group)


def _membership_command(kind: Literal["join", "leave"], connection_id: str, group: str) -> dict[str, str]:
    node_of(connection_id)
    return {
        "v": PROTOCOL_VERSION,
        "type": kind,
        "target": "connection",
        "to": connection_id,
        "group": check_group(group),
    }


def _check_target(target: str, to: str | None) -> str:
    if target not in _TARGETS:
        raise ValueError(f"unknown target {target!r} (expected one of {', '.join(sorted(_TARGETS))})")
    if target == "all":
        if to is not None:
            raise ValueError('a command for target "all" has no "to"')
    elif not isinstance(to, str) or not to:
        raise ValueError(f'a command for target "{target}" needs a non-empty "to"')
    elif target == "group":
        check_group(to)
    return target


# Server frames: schemas/server-frame.schema.json.


def push_frame(action: str, data: Any = None) -> str:
    """``{"action", "data"}``: a push from a worker or publisher.

    Raises ValueError for a malformed action name and TypeError (or ValueError) for data
    that JSON can't encode.
    """
    return codec.dumps({"action": _check_action(action), "data": data})


def reply_frame(action: str, data: Any, id: str) -> str:
    """``{"action", "data", "id"}``: the answer to the client frame that carried ``id``."""
    return checked_reply_frame(_check_action(action), data, _check_id(id)).decode()


def checked_reply_frame(action: str, data: Any, id: str) -> bytes:
    """``reply_frame()`` in UTF-8, for an ``action`` and ``id`` checked already (a decoded
    event's): the worker's hot path. Raises TypeError or ValueError when ``data`` can't be
    encoded, a str that is not UTF-8 included."""
    return codec.dumps_utf8({"action": action, "data": data, "id": id})


def error_frame(code: str, message: str, id: str | None = None) -> str:
    """``{"action": "$error", "data": {"code", "message"}[, "id"]}``."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, not {type(message).__name__}")
    frame: dict[str, Any] = {"action": "$error", "data": {"code": code, "message": message}}
    if id is not None:
        frame["id"] = _check_id(id)
    return codec.dumps(frame)


def _check_action(action: str) -> str:
    if not is_action_name(action):
        raise ValueError(f"action must be 1-64 letters, digits or _ . : -, not {action!r}")
    return action


def _check_id(frame_id: str) -> str:
    if not _is_frame_id(frame_id):
        raise ValueError(f"a frame id is a string of 1-64 characters, not {frame_id!r}")
    return frame_id
