"""Names and ids: node ids, connection ids, actions, groups, user ids, frame ids.

A connection id is ``<node id>.<22 base64url characters>``: the node id tells every process
which gateway holds the socket (its home: a resumed session keeps it, docs/resume.md), the
suffix is 128 random bits so ids can't be guessed. A resume token is the connection id, a dot
and 128 more random bits. Every
pattern here is the one of ``protocol/schemas/`` and is used with ``fullmatch()``; ``[0-9]``
is ASCII only.
"""

from __future__ import annotations

import re
import secrets

from wsq_protocol.codes import MAX_GROUP_LENGTH, MAX_ID_LENGTH, MAX_REASON_BYTES, MAX_USER_ID_BYTES

__all__ = [
    "ACTION_RE",
    "CONNECTION_ID_RE",
    "GROUP_RE",
    "HISTORY",
    "NODE_ID_RE",
    "PING",
    "RESERVED_RE",
    "check_action",
    "check_close",
    "check_frame_id",
    "check_group",
    "check_user_id",
    "is_action_name",
    "is_frame_id",
    "is_group_name",
    "new_connection_id",
    "new_node_id",
    "new_resume_token",
    "node_of",
    "parse_resume_token",
    "user_id_problem",
    "valid_node_id",
]

NODE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONNECTION_ID_RE = re.compile(r"([A-Za-z0-9_-]{1,64})\.[A-Za-z0-9_-]{22}")
ACTION_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RESERVED_RE = re.compile(r"\$[A-Za-z0-9_.:-]{1,63}")
RESUME_TOKEN_RE = re.compile(r"((?:[A-Za-z0-9_-]{1,64})\.[A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{22})")
GROUP_RE = re.compile(r"[A-Za-z0-9_.:@/-]{1,128}")
PING = "$ping"
HISTORY = "$history"
"""The client action reading a group's history, answered by the gateway (``wsq_protocol.history``)."""
"""The one reserved action a client may send: the gateway answers it with ``$pong``."""
# C0 and C1 control characters and DEL: they have no place in an id that logs and keys show.
_CONTROL_CHARACTER_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def new_node_id() -> str:
    """A fresh node id for a gateway process that was not given one."""
    return f"gw-{secrets.token_hex(6)}"


def valid_node_id(node_id: str) -> bool:
    return NODE_ID_RE.fullmatch(node_id) is not None


def new_connection_id(node_id: str) -> str:
    return f"{node_id}.{secrets.token_urlsafe(16)}"  # 16 bytes -> 22 characters


def new_resume_token(connection_id: str) -> str:
    """``<connection id>.<22 base64url characters>``: what a client gives back to resume its
    session (``$connected``'s ``resume_token``); the suffix is 128 random bits, the secret."""
    return f"{connection_id}.{secrets.token_urlsafe(16)}"


def parse_resume_token(token: object) -> tuple[str, str] | None:
    """``(connection id, secret)`` of a resume token, or None when ``token`` is not one."""
    match = RESUME_TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
    return None if match is None else (match.group(1), match.group(2))


def node_of(connection_id: str) -> str:
    """The node id of the gateway holding ``connection_id`` (the text before its dot), or
    ValueError when it is not a wsq connection id."""
    match = CONNECTION_ID_RE.fullmatch(connection_id) if isinstance(connection_id, str) else None
    if match is None:
        raise ValueError(f"not a wsq connection id: {connection_id!r}")
    return match.group(1)


def is_action_name(name: object) -> bool:
    """Whether ``name`` is a valid (non-reserved) action: 1-64 letters, digits, ``_ . : -``."""
    return isinstance(name, str) and ACTION_RE.fullmatch(name) is not None


def check_action(action: str) -> str:
    """``action``, or ValueError when it is not a valid action name."""
    if not is_action_name(action):
        raise ValueError(f"action must be 1-64 letters, digits or _ . : -, not {action!r}")
    return action


def is_group_name(name: object) -> bool:
    """Whether ``name`` is a valid group: 1-128 letters, digits or ``_ . : @ / -``."""
    return isinstance(name, str) and GROUP_RE.fullmatch(name) is not None


def check_group(group: str) -> str:
    """``group``, or ValueError when it is not a valid group name."""
    if not is_group_name(group):
        raise ValueError(
            f"a group name is 1-{MAX_GROUP_LENGTH} letters, digits or _ . : @ / -, not {group!r}"
        )
    return group


def is_frame_id(value: object) -> bool:
    """Whether ``value`` is a valid frame id: a string of 1 to 64 characters."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_LENGTH


def check_frame_id(frame_id: str) -> str:
    """``frame_id``, or ValueError when it is not a valid frame id."""
    if not is_frame_id(frame_id):
        raise ValueError(f"a frame id is a string of 1-{MAX_ID_LENGTH} characters, not {frame_id!r}")
    return frame_id


def user_id_problem(user_id: object) -> str | None:
    """Why ``user_id`` is not a usable user id, or None when it is one: 1 to 256 bytes of
    UTF-8 without control characters (a lone surrogate has no UTF-8, and Redis keys and
    stream fields are bytes)."""
    if not isinstance(user_id, str) or not user_id:
        return "a user id is a non-empty string"
    try:
        size = len(user_id.encode())
    except UnicodeEncodeError:
        return "a user id must be valid UTF-8 (no lone surrogates)"
    if size > MAX_USER_ID_BYTES:
        return f"a user id is at most {MAX_USER_ID_BYTES} bytes of UTF-8, not {size}"
    if _CONTROL_CHARACTER_RE.search(user_id):
        return "a user id must not contain control characters"
    return None


def check_user_id(user_id: str) -> str:
    """``user_id``, or ValueError when it is not 1 to 256 bytes of UTF-8 without control
    characters (``user_id_problem``). The gateway applies the same rule to a token's ``sub``
    (HTTP 401) and to a connect hook's user id."""
    if user_id_problem(user_id) is not None:
        raise ValueError(
            f"a user id is 1-{MAX_USER_ID_BYTES} bytes of UTF-8 without control characters, not {user_id!r}"
        )
    return user_id


def check_close(code: int, reason: str) -> None:
    """ValueError unless ``code`` is 1000 or 3000-4999 and ``reason`` at most 123 bytes of UTF-8
    (TypeError when ``reason`` is not a str)."""
    if isinstance(code, bool) or not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
        raise ValueError(f"close code must be 1000 or 3000-4999, not {code!r}")
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, not {type(reason).__name__}")
    if len(reason.encode()) > MAX_REASON_BYTES:
        raise ValueError(f"close reason is longer than {MAX_REASON_BYTES} bytes of UTF-8")
