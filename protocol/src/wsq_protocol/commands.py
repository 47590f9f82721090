"""Outbound commands (workers and publishers -> gateways): the entries of node streams and of
the broadcast stream.

A command is a flat map of strings (``schemas/command.schema.json``), its fields in the order
of the golden examples: workers and publishers encode it (:func:`send_command` and its
siblings), gateways decode it (:func:`decode_command`) and write a ``send``'s frame bytes to
the sockets verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, TypeAlias

from wsq_protocol.codes import PROTOCOL_VERSION, is_application_close_code
from wsq_protocol.errors import CommandError
from wsq_protocol.ids import check_close, check_group, check_user_id, node_of

__all__ = [
    "Command",
    "CommandType",
    "TargetKind",
    "accept_command",
    "connection_send",
    "decode_command",
    "detach_command",
    "disconnect_command",
    "join_command",
    "leave_command",
    "refuse_command",
    "relay_command",
    "resume_command",
    "resumed_command",
    "send_command",
]

TargetKind: TypeAlias = Literal["connection", "user", "group", "all"]
CommandType: TypeAlias = Literal[
    "send", "disconnect", "join", "leave", "accept", "refuse", "resume", "resumed", "relay", "detach"
]
_TARGET_NAMES: frozenset[str] = frozenset({"connection", "user", "group", "all"})


# Encoding: workers and publishers.


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


# Between gateways: session resume (protocol/README.md, "Session resume"). A session lives on
# its home gateway (the node of its connection id); a client that comes back on another one
# (the guest) is served through it: the guest asks (resume), the home answers (resumed),
# then writes each of the session's frames, numbered, to the guest (relay), until the guest
# says the socket is gone (detach).


def resume_command(
    connection_id: str, secret: str, after: int, node: str, user_id: str | None
) -> dict[str, str]:
    """``resume``, to the session's home: the guest gateway ``node`` holds a socket that asks
    for the session with ``secret``, having seen its frames up to ``after``; ``user_id`` is
    the user the socket authenticated as, if any (it must be the session's)."""
    fields = _session_head("resume", connection_id)
    fields |= {"token": secret, "after": str(int(after)), "node": node}
    if user_id is not None:
        fields["user_id"] = user_id
    return fields


def resumed_command(
    connection_id: str,
    epoch: int,
    user_id: str | None = None,
    recovered: bool = False,
    frames: bytes = b"[]",
) -> dict[str, str | bytes]:
    """``resumed``, the home's answer to ``resume``: ``epoch`` 0 when refused (no such session,
    a wrong secret or user), else the socket's number, which its ``detach`` quotes; with the
    session's user, whether the frames after ``after`` could all be replayed (``recovered``)
    and those frames (a JSON array of numbered server frames)."""
    fields: dict[str, str | bytes] = dict(_session_head("resumed", connection_id))
    fields["epoch"] = str(int(epoch))
    if user_id is not None:
        fields["user_id"] = user_id
    fields["recovered"] = "1" if recovered else "0"
    fields["frames"] = frames
    return fields


def relay_command(connection_id: str, frame: bytes) -> dict[str, str | bytes]:
    """``relay``, home to guest: one of the session's frames, numbered (``seq``), for its socket."""
    fields: dict[str, str | bytes] = dict(_session_head("relay", connection_id))
    fields["frame"] = frame
    return fields


def detach_command(connection_id: str, epoch: int, code: int) -> dict[str, str]:
    """``detach``, guest to home: socket ``epoch`` of the session closed with ``code``."""
    return _session_head("detach", connection_id) | {"epoch": str(int(epoch)), "code": str(int(code))}


def _session_head(kind: str, connection_id: str) -> dict[str, str]:
    node_of(connection_id)
    return {"v": PROTOCOL_VERSION, "type": kind, "target": "connection", "to": connection_id}


def _check_target(target: str, to: str | None) -> str:
    if target not in _TARGET_NAMES:
        raise ValueError(f"unknown target {target!r} (expected one of {', '.join(sorted(_TARGET_NAMES))})")
    if target == "all":
        if to is not None:
            raise ValueError('a command for target "all" has no "to"')
    elif not isinstance(to, str) or not to:
        raise ValueError(f'a command for target "{target}" needs a non-empty "to"')
    elif target == "group":
        check_group(to)
    return target


# Decoding: gateways.


class Command(NamedTuple):
    """A decoded outbound command."""

    type: CommandType
    target: TargetKind
    to: str | None
    frame: bytes | None = None  # send, relay; resumed: a JSON array of frames
    exclude: str | None = None  # send to a group: skip this connection
    code: int = 0  # disconnect
    reason: str = ""  # disconnect
    group: str | None = None  # join, leave
    user_id: str | None = None  # accept, resume, resumed
    token: str | None = None  # resume: the session's secret
    after: int = 0  # resume: the last seq the client saw
    node: str | None = None  # resume: the guest gateway
    epoch: int = 0  # resumed, detach: the socket's number (0: refused)
    recovered: bool = False  # resumed


_TARGETS: dict[bytes, TargetKind] = {
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
    b"resume": _COMMON | {b"token", b"after", b"node", b"user_id"},
    b"resumed": _COMMON | {b"epoch", b"user_id", b"recovered", b"frames"},
    b"relay": _COMMON | {b"frame"},
    b"detach": _COMMON | {b"epoch", b"code"},
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
        if not is_application_close_code(code):
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
    if kind in (b"resume", b"resumed", b"relay", b"detach"):
        if target != "connection":
            raise CommandError(f"{kind!r} needs target=connection")
        return _decode_session_command(kind, to, fields)
    raise CommandError(f"unknown type {kind!r}")


def _decode_session_command(kind: bytes, to: str | None, fields: Mapping[bytes, bytes]) -> Command:
    raw_user = fields.get(b"user_id")
    user_id = _text(raw_user, "user_id") if raw_user is not None else None
    if kind == b"resume":
        token, node = fields.get(b"token"), fields.get(b"node")
        if token is None or node is None:
            raise CommandError("resume needs a token and a node")
        return Command(
            "resume",
            "connection",
            to,
            user_id=user_id,
            token=_text(token, "token"),
            after=_number(fields, b"after"),
            node=_text(node, "node"),
        )
    if kind == b"resumed":
        frames = fields.get(b"frames", b"[]")
        recovered = fields.get(b"recovered") == b"1"
        epoch = _number(fields, b"epoch")
        return Command(
            "resumed", "connection", to, frame=frames, user_id=user_id, epoch=epoch, recovered=recovered
        )
    if kind == b"relay":
        frame = fields.get(b"frame")
        if frame is None:
            raise CommandError("relay without frame")
        return Command("relay", "connection", to, frame=frame)
    return Command("detach", "connection", to, epoch=_number(fields, b"epoch"), code=_number(fields, b"code"))


def _number(fields: Mapping[bytes, bytes], name: bytes) -> int:
    try:
        value = int(fields.get(name, b""))
    except ValueError:
        raise CommandError(f"{name.decode()!r} is not a number") from None
    if value < 0:
        raise CommandError(f"{name.decode()!r} is negative")
    return value


def _text(raw: bytes, name: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CommandError(f"{name!r} is not valid UTF-8") from None
