"""Redis key names and stream caps, as listed in protocol/keys.json (settings: ``settings.py``)."""

from __future__ import annotations

CONSUMER_GROUP = "workers"

# Approximate caps (XADD ... MAXLEN ~ N): a gateway that vanished can't make Redis grow without bound.
NODE_STREAM_MAXLEN = 100_000
BROADCAST_STREAM_MAXLEN = 1_000


def inbound_stream(prefix: str) -> str:
    """Events from every gateway to the workers (consumer group ``workers``)."""
    return f"{prefix}:inbound"


def node_stream(prefix: str, node: str) -> str:
    """Commands for the connections held by the gateway ``node``."""
    return f"{prefix}:node:{node}:out"


def broadcast_stream(prefix: str) -> str:
    """Commands for every connection, read by every gateway."""
    return f"{prefix}:broadcast"


def connection(prefix: str, connection_id: str) -> str:
    """Hash describing one connection: ``node``, ``user_id``, ``since``, ``addr``."""
    return f"{prefix}:conn:{connection_id}"


def user_connections(prefix: str, user_id: str) -> str:
    """Set of the connection ids of one user, on every gateway."""
    return f"{prefix}:user:{user_id}:conns"


def node_connections(prefix: str, node: str) -> str:
    """Set of the connection ids one gateway holds."""
    return f"{prefix}:node:{node}:conns"


def group_connections(prefix: str, group: str) -> str:
    """Set of the connection ids of one group, on every gateway."""
    return f"{prefix}:group:{group}:conns"


def connection_groups(prefix: str, connection_id: str) -> str:
    """Set of the groups of one connection."""
    return f"{prefix}:conn:{connection_id}:groups"


def nodes(prefix: str) -> str:
    """Sorted set of the live gateways, scored by their last heartbeat (ms since the epoch)."""
    return f"{prefix}:nodes"


def node_reaped(prefix: str, node: str) -> str:
    """Set by a reaper that removed the connections of ``node`` (read by that gateway only)."""
    return f"{prefix}:node:{node}:reaped"


def node_sequence(prefix: str, node: str) -> str:
    """The sequence number of the last client frame ``node`` appended (read by that gateway only)."""
    return f"{prefix}:node:{node}:seq"


def dead_letters(prefix: str) -> str:
    """Stream of the events that used up their attempts, with their last error."""
    return f"{prefix}:dead"


def delayed(prefix: str) -> str:
    """Sorted set of the messages waiting for a retry (``Retry(delay=...)``), scored by due time (ms)."""
    return f"{prefix}:delayed"
