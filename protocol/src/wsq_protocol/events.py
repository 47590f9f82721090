"""Inbound events (gateway -> workers): the entries of the inbound stream.

An event is a flat map of strings (``schemas/event.schema.json``): the gateway encodes it
(:func:`event_fields`), appending the client's frame text as received, and workers decode it
(:func:`decode_event`), checking everything, the client frame included.
"""

from __future__ import annotations

import http.cookies
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

from wsq_protocol import codec
from wsq_protocol.codes import PROTOCOL_VERSION
from wsq_protocol.errors import FrameError, ProtocolError
from wsq_protocol.frames import decode_client_frame
from wsq_protocol.ids import CONNECTION_ID_RE, NODE_ID_RE

__all__ = ["Event", "EventType", "Request", "decode_event", "event_fields", "request_text", "text_fields"]

EventType: TypeAlias = Literal["connect", "message", "disconnect"]

_EVENT_TYPES: frozenset[str] = frozenset({"connect", "message", "disconnect"})
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
_PROTOCOL_VERSION_BYTES = PROTOCOL_VERSION.encode()
_TS = re.compile(r"[0-9]{1,16}")
# The same patterns over bytes, for the message events read from Redis (decode_event's fast path).
_NODE_BYTES = re.compile(NODE_ID_RE.pattern.encode())
_CONNECTION_ID_BYTES = re.compile(CONNECTION_ID_RE.pattern.encode())
_TS_BYTES = re.compile(_TS.pattern.encode())
_CLOSE_CODE = re.compile(r"[0-9]{1,4}")
_ATTEMPT = re.compile(r"[1-9][0-9]{0,3}")
_HOOK = "1"
_REQUEST_FIELDS = frozenset({"path", "query", "headers"})
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def event_fields(
    kind: EventType,
    *,
    connection_id: str,
    node: str,
    user_id: str | None,
    ts_ms: int,
    addr: str,
    frame: str | None = None,
    close_code: int | None = None,
    hook: bool = False,
    request: str | None = None,
) -> dict[str, str]:
    """The field map of one inbound event; ``request`` is ``request_text()``'s (connect only)."""
    fields = {
        "v": PROTOCOL_VERSION,
        "type": kind,
        "connection_id": connection_id,
        "node": node,
        "ts": str(ts_ms),
        "addr": addr,
    }
    if user_id is not None:
        fields["user_id"] = user_id
    if frame is not None:
        fields["frame"] = frame
    if close_code is not None:
        fields["close_code"] = str(close_code)
    if hook:
        fields["hook"] = "1"
    if request is not None:
        fields["request"] = request
    return fields


def request_text(path: str, query: str, headers: Mapping[str, str]) -> str:
    """A connect event's ``request`` field: the upgrade request's path, raw query string and
    forwarded headers (lower-case names), as compact JSON text."""
    return codec.dumps({"path": path, "query": query, "headers": headers})


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
    connection_id = _required(event, "connection_id", CONNECTION_ID_RE)
    node = _required(event, "node", NODE_ID_RE)
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
    try:
        return decode_client_frame(text)
    except FrameError as exc:
        raise ProtocolError(f"the frame is invalid: {exc.message}") from None


def _json(text: str, what: str) -> Any:
    try:
        return codec.loads(text)
    except ValueError:
        raise ProtocolError(f"{what} is not valid JSON") from None
