"""Redis key names, built from ``protocol/keys.json`` and one prefix (``WSQ_KEY_PREFIX``).

``Keys(prefix)`` has one member per key of ``keys.json`` (a property for a fixed key, a method
taking the one variable part for the others); a test checks that both agree. Lua scripts never
build key names: callers pass every key through ``KEYS[]`` (protocol/README.md, "Lua scripts").
"""

from __future__ import annotations

import functools
import re
from typing import Final

from wsq_protocol.resources import keys_document

_DOC = keys_document()
_TEMPLATES: Final[dict[str, str]] = _DOC["keys"]

CONSUMER_GROUP: Final[str] = _DOC["consumer_group"]
"""The workers' consumer group on the inbound stream."""
REAPED_TTL_S: Final[int] = _DOC["expire_s"]["node_reaped"]
"""How long a reaped gateway's flag lives (``keys.json``, ``expire_s``)."""
_VARIABLE = re.compile(r"\{(?!prefix\})\w+\}")  # a template's one variable part, e.g. {node}


class _Template:
    """A key template with its prefix filled in, split around its one variable part."""

    __slots__ = ("after", "before")

    def __init__(self, name: str, prefix: str) -> None:
        # Split the template first, then fill the prefix in: a prefix may hold braces itself
        # (a Redis hash tag such as "{app}") and must not be taken for the variable part.
        text = _TEMPLATES[name]
        variable = _VARIABLE.search(text)
        before, after = (text, "") if variable is None else (text[: variable.start()], text[variable.end() :])
        self.before = before.replace("{prefix}", prefix)
        self.after = after.replace("{prefix}", prefix)


class Keys:
    """Every Redis key wsq uses, for one prefix."""

    __slots__ = (
        "_connection",
        "_connection_groups",
        "_group_connections",
        "_node_connections",
        "_node_reaped",
        "_node_sequence",
        "_node_stream",
        "_user_connections",
        "broadcast_stream",
        "dead_letters",
        "delayed",
        "inbound_stream",
        "nodes",
        "prefix",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.inbound_stream = _Template("inbound_stream", prefix).before
        """Events from every gateway to the workers (consumer group ``workers``)."""
        self.broadcast_stream = _Template("broadcast_stream", prefix).before
        """Commands for every connection, read by every gateway."""
        self.nodes = _Template("nodes", prefix).before
        """Sorted set of the live gateways, scored by their last heartbeat (ms since the epoch)."""
        self.dead_letters = _Template("dead_letters", prefix).before
        """Stream of the events that used up their attempts, with their last error."""
        self.delayed = _Template("delayed", prefix).before
        """Sorted set of the messages waiting for a retry, scored by due time (ms)."""
        self._node_stream = _Template("node_stream", prefix)
        self._connection = _Template("connection", prefix)
        self._user_connections = _Template("user_connections", prefix)
        self._node_connections = _Template("node_connections", prefix)
        self._group_connections = _Template("group_connections", prefix)
        self._connection_groups = _Template("connection_groups", prefix)
        self._node_reaped = _Template("node_reaped", prefix)
        self._node_sequence = _Template("node_sequence", prefix)

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keys) and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash(self.prefix)

    def node_stream(self, node: str) -> str:
        """Commands for the connections held by the gateway ``node``."""
        t = self._node_stream
        return t.before + node + t.after

    def connection(self, connection_id: str) -> str:
        """Hash describing one connection: ``node``, ``user_id``, ``since``, ``addr``."""
        t = self._connection
        return t.before + connection_id + t.after

    def user_connections(self, user_id: str) -> str:
        """Set of the connection ids of one user, on every gateway."""
        t = self._user_connections
        return t.before + user_id + t.after

    def node_connections(self, node: str) -> str:
        """Set of the connection ids one gateway holds."""
        t = self._node_connections
        return t.before + node + t.after

    def group_connections(self, group: str) -> str:
        """Set of the connection ids of one group, on every gateway."""
        t = self._group_connections
        return t.before + group + t.after

    def connection_groups(self, connection_id: str) -> str:
        """Set of the groups of one connection."""
        t = self._connection_groups
        return t.before + connection_id + t.after

    def node_reaped(self, node: str) -> str:
        """Set by a reaper that removed the connections of ``node`` (read by that gateway only)."""
        t = self._node_reaped
        return t.before + node + t.after

    def node_sequence(self, node: str) -> str:
        """The number of the last batch of writes ``node`` ran (read by that gateway only)."""
        t = self._node_sequence
        return t.before + node + t.after


@functools.lru_cache(maxsize=64)
def keys_for(prefix: str) -> Keys:
    """``Keys(prefix)``, made once per prefix: for callers that hold only the prefix."""
    return Keys(prefix)
