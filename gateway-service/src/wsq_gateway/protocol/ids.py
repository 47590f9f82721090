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
