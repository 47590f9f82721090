"""Node ids and connection ids.

A connection id is ``<node id>.<22 base64url characters>``: the node id tells every
process which gateway holds the socket, the suffix is 128 random bits so ids can't be
guessed.
"""

from __future__ import annotations

import re
import secrets

NODE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONNECTION_ID_RE = re.compile(r"([A-Za-z0-9_-]{1,64})\.[A-Za-z0-9_-]{22}")


def new_node_id() -> str:
    """A fresh node id for a gateway process that was not given one."""
    return f"gw-{secrets.token_hex(6)}"


def valid_node_id(node_id: str) -> bool:
    return NODE_ID_RE.fullmatch(node_id) is not None


def new_connection_id(node_id: str) -> str:
    return f"{node_id}.{secrets.token_urlsafe(16)}"  # 16 bytes -> 22 characters


def node_of(connection_id: str) -> str | None:
    """The node id inside a connection id, or None when it is not a connection id."""
    match = CONNECTION_ID_RE.fullmatch(connection_id)
    return match.group(1) if match else None


MAX_USER_ID_BYTES = 256
# C0 and C1 control characters and DEL: they have no place in an id that logs and keys show.
_CONTROL_CHARACTER_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


def user_id_problem(user_id: object) -> str | None:
    """Why ``user_id`` is not a usable user id, or None when it is one: 1 to 256 bytes of
    UTF-8 without control characters (a lone surrogate has no UTF-8, and Redis keys and
    stream fields are bytes). The worker SDK's ``check_user_id`` applies the same rule."""
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
