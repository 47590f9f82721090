"""Redis stream entries: inbound events (gateway -> workers) and outbound commands.

Both are flat maps of strings (``protocol/schemas/event.schema.json`` and
``command.schema.json``), so the gateway never decodes or re-encodes a payload: it
appends the client's frame text as received, and writes a command's ``frame`` bytes to
the sockets verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import orjson

VERSION = "1"
EventType = Literal["connect", "message", "disconnect"]
Target = Literal["connection", "user", "group", "all"]
CommandType = Literal["send", "disconnect", "join", "leave", "accept", "refuse"]


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
        "v": VERSION,
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
    return orjson.dumps({"path": path, "query": query, "headers": headers}).decode()


class Command(NamedTuple):
    """A decoded outbound command."""

    type: CommandType
    target: Target
    to: str | None
    frame: bytes | None = None  # send
    exclude: str | None = None  # send to a group: skip this connection
    code: int = 0  # disconnect
    reason: str = ""  # disconnect
    group: str | None = None  # join, leave
    user_id: str | None = None  # accept


class CommandError(ValueError):
    """An outbound command that does not follow the protocol (it is logged and skipped)."""


_TARGETS: dict[bytes, Target] = {
    b"connection": "connection",
    b"user": "user",
    b"group": "group",
    b"all": "all",
}


_COMMON = frozenset((b"v", b"type", b"target", b"to"))
_FIELDS = {
    b"send": _COMMON | {b"frame", b"exclude"},
    b"disconnect": _COMMON | {b"code", b"reason"},
    b"join": _COMMON | {b"group"},
    b"leave": _COMMON | {b"group"},
    b"accept": _COMMON | {b"user_id"},
    b"refuse": _COMMON | {b"code", b"reason"},
}


# A send to one connection (the replies: most of what a gateway reads), its fields in the
# order the SDK writes them (send_command()): recognised on the entry's flat list of fields
# and values as read, without building a field map first.
_CONNECTION_SEND_HEAD = [b"v", b"1", b"type", b"send", b"target", b"connection", b"to"]


def connection_send(flat: Sequence[bytes]) -> tuple[str, bytes] | None:
    """``(to, frame)`` when ``flat`` (a stream entry's fields and values, as Redis returns them)
    is a send to one connection in the SDK's field order; None for anything else, which
    ``decode_command`` then decodes or refuses."""
    if len(flat) != 10 or flat[8] != b"frame" or flat[:7] != _CONNECTION_SEND_HEAD:
        return None
    try:
        return flat[7].decode(), flat[9]
    except UnicodeDecodeError:
        return None


def decode_command(fields: Mapping[bytes, bytes]) -> Command:
    """Decode a stream entry read from a node stream or the broadcast stream."""
    if fields.get(b"v") != b"1":
        raise CommandError(f"unsupported version {fields.get(b'v')!r}")
    target = _TARGETS.get(fields.get(b"target", b""))
    if target is None:
        raise CommandError(f"unknown target {fields.get(b'target')!r}")
    raw_to = fields.get(b"to")
    if (target == "all") != (raw_to is None):
        raise CommandError("'to' is required, except for target=all where it is forbidden")
    to = _text(raw_to, "to") if raw_to is not None else None

    kind = fields.get(b"type")
    allowed = _FIELDS.get(kind or b"")
    if allowed is not None and not allowed.issuperset(fields):
        unknown = sorted(k.decode(errors="replace") for k in fields if k not in allowed)
        raise CommandError(f"fields not allowed in a {kind!r} command: {unknown}")
    if kind == b"send":
        frame = fields.get(b"frame")
        if frame is None:
            raise CommandError("send without frame")
        raw_exclude = fields.get(b"exclude")
        if raw_exclude is not None and target != "group":
            raise CommandError("exclude is only for target=group")
        exclude = _text(raw_exclude, "exclude") if raw_exclude is not None else None
        return Command("send", target, to, frame=frame, exclude=exclude)
    if kind in (b"disconnect", b"refuse"):
        try:
            code = int(fields.get(b"code", b""))
        except ValueError:
            raise CommandError(f"{kind!r} without a numeric code") from None
        if code != 1000 and not 3000 <= code <= 4999:
            raise CommandError(f"close code {code} is not 1000 or 3000-4999")
        reason = fields.get(b"reason", b"").decode(errors="replace")
        if kind == b"refuse" and target != "connection":
            raise CommandError("refuse needs target=connection")
        return Command(
            "disconnect" if kind == b"disconnect" else "refuse", target, to, code=code, reason=reason
        )
    if kind == b"accept":
        if target != "connection":
            raise CommandError("accept needs target=connection")
        user_id = fields.get(b"user_id")
        return Command(
            "accept", target, to, user_id=_text(user_id, "user_id") if user_id is not None else None
        )
    if kind in (b"join", b"leave"):
        group = fields.get(b"group")
        if group is None or target != "connection":
            raise CommandError("join and leave need target=connection and a group")
        return Command("join" if kind == b"join" else "leave", target, to, group=_text(group, "group"))
    raise CommandError(f"unknown type {kind!r}")


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CommandError(f"{name!r} is not valid UTF-8") from None
