"""Who is connected, read straight from the gateways' registry in Redis (protocol/README.md, Presence):
a user's or a group's connections from its set (``{prefix:user:<id>}:conns``,
``{prefix:group:<name>}:conns``, in slots of their own), a connection from its hash and its set
of groups (in its node's shard).

Only the decoding of the replies lives here; ``publishing.AsyncPublishing`` (and the worker SDK's
blocking ``Publisher``) run the reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from wsq_protocol.errors import ProtocolError

__all__ = ["ConnectionInfo", "decode_connection_info", "decode_members"]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One connection as the registry describes it (``connection_info()`` of a publisher, or the HTTP API)."""

    connection_id: str
    node: str
    """The gateway holding the connection."""
    user_id: str | None
    """The connection's user, None when anonymous."""
    connected_since: datetime
    """When the gateway registered the connection (timezone-aware, UTC)."""
    addr: str
    """The client's address as the gateway saw it (may be empty)."""
    groups: frozenset[str]
    """The groups the connection belongs to."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_members(members: Iterable[bytes | str]) -> list[str]:
    """The members of a Redis set, sorted."""
    return sorted(_text(member) for member in members)


def decode_connection_info(
    connection_id: str, fields: Mapping[bytes | str, bytes | str], groups: Iterable[bytes | str]
) -> ConnectionInfo | None:
    """The connection from ``HGETALL {prefix:k}:conn:{id}`` and ``SMEMBERS {prefix:k}:conn:{id}:groups``
    (``k`` the shard of the connection's node);
    None when the hash is gone (empty). ProtocolError when ``node`` or ``since`` is missing or malformed.
    """
    if not fields:
        return None
    info = {_text(key): _text(value) for key, value in fields.items()}
    node, since = info.get("node"), info.get("since", "")
    if not node:
        raise ProtocolError(f"connection {connection_id} has no node in the registry")
    if not (since.isascii() and since.isdigit()):
        raise ProtocolError(f"connection {connection_id} has a malformed since in the registry: {since!r}")
    return ConnectionInfo(
        connection_id=connection_id,
        node=node,
        user_id=info.get("user_id"),
        connected_since=_EPOCH + timedelta(milliseconds=int(since)),
        addr=info.get("addr", ""),
        groups=frozenset(_text(group) for group in groups),
    )
