"""Redis key names, built from ``protocol/keys.json``, a prefix (``WSQ_KEY_PREFIX``) and the
number of shards (``WSQ_SHARDS``).

``Keys(prefix, shards)`` has one member per key of ``keys.json`` (a property for a fixed key, a
method taking the one variable part for the others); a test checks that both agree. The keys of
a node — its stream, its connections' records, its inbound partition — share one hash tag,
``{<prefix>:<shard>}`` with the node's shard (``shard_of``), so that on a Redis Cluster they live
in one slot and every script touches one slot (protocol/README.md, "Slots and shards"). Lua
scripts never build key names: callers pass every key through ``KEYS[]``.
"""

from __future__ import annotations

import functools
import os
import re
import zlib
from collections.abc import Mapping
from typing import Final

from wsq_protocol.ids import node_of
from wsq_protocol.resources import keys_document

_DOC = keys_document()
_TEMPLATES: Final[dict[str, str]] = _DOC["keys"]

CONSUMER_GROUP: Final[str] = _DOC["consumer_group"]
"""The workers' consumer group on each inbound stream partition."""
REAPED_TTL_S: Final[int] = _DOC["expire_s"]["node_reaped"]
"""How long a reaped gateway's flag lives (``keys.json``, ``expire_s``)."""
DEFAULT_SHARDS: Final[int] = _DOC["shards"]["default"]
"""``WSQ_SHARDS`` when unset (``keys.json``, ``shards``)."""
MAX_SHARDS: Final[int] = _DOC["shards"]["max"]

# A template's parts: "{prefix}", "{shard}" and at most one variable part, e.g. "{node}".
_PLACEHOLDER = re.compile(r"\{(prefix|shard|node|connection_id|user_id|group)\}")


def shard_of(node: str, shards: int) -> int:
    """The shard of a gateway node: crc32 of its id (UTF-8) mod ``shards`` (keys.json)."""
    return zlib.crc32(node.encode()) % shards


def check_shards(shards: int) -> int:
    """``shards`` if it is a valid ``WSQ_SHARDS`` (1 to 1024), else ValueError."""
    if type(shards) is not int or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"the number of shards must be an integer from 1 to {MAX_SHARDS}, not {shards!r}")
    return shards


def shards_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``WSQ_SHARDS`` (default 16): ValueError naming it when it is not a number from 1 to 1024."""
    raw = (os.environ if environ is None else environ).get("WSQ_SHARDS", "").strip()
    if not raw:
        return DEFAULT_SHARDS
    try:
        return check_shards(int(raw))
    except ValueError:
        raise ValueError(f"WSQ_SHARDS must be a number from 1 to {MAX_SHARDS}, not {raw!r}") from None


class _Template:
    """A key template with its prefix filled in: the text before and after its shard and its
    one variable part (either may be missing)."""

    __slots__ = ("parts", "sharded", "variable")

    def __init__(self, name: str, prefix: str) -> None:
        # Split the template first, then fill the prefix in: a prefix may hold braces itself
        # and must not be taken for a placeholder.
        self.parts: list[str] = []
        self.sharded = False
        self.variable: str | None = None
        text, at = _TEMPLATES[name], 0
        for match in _PLACEHOLDER.finditer(text):
            literal = text[at : match.start()]
            at = match.end()
            what = match.group(1)
            if what == "prefix":
                self._literal(literal + prefix)
                continue
            self._literal(literal)
            self.parts.append("")  # a slot filled at call time
            if what == "shard":
                self.sharded = True
            else:
                self.variable = what
        self._literal(text[at:])

    def _literal(self, text: str) -> None:
        if self.parts and not self._is_slot(len(self.parts) - 1):
            self.parts[-1] += text
        else:
            self.parts.append(text)

    def _is_slot(self, index: int) -> bool:
        return index % 2 == 1

    def fill(self, *values: str) -> str:
        """The key, with the shard and the variable part in their template's order."""
        parts, out = self.parts, []
        for index, part in enumerate(parts):
            out.append(values[index // 2] if index % 2 else part)
        return "".join(out)


class Keys:
    """Every Redis key wsq uses, for one prefix and number of shards."""

    __slots__ = (
        "_templates",
        "broadcast_stream",
        "nodes",
        "prefix",
        "schemas",
        "shards",
        "shards_key",
    )

    def __init__(self, prefix: str, shards: int = DEFAULT_SHARDS) -> None:
        self.prefix = prefix
        self.shards = check_shards(shards)
        templates = {name: _Template(name, prefix) for name in _TEMPLATES}
        self._templates = templates
        self.broadcast_stream = templates["broadcast_stream"].fill()
        """Commands for every connection, read by every gateway."""
        self.nodes = templates["nodes"].fill()
        """Sorted set of the live gateways, scored by their last heartbeat (ms since the epoch)."""
        self.shards_key = templates["shards"].fill()
        """The deployment's number of shards, written by the first process to start."""
        self.schemas = templates["schemas"].fill()
        """Hash: action -> the JSON Schema its ``data`` must match (workers write, gateways read),
        and ``$version``, bumped by every change (``wsq_protocol.action_schemas``)."""

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r}, {self.shards})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keys) and (other.prefix, other.shards) == (self.prefix, self.shards)

    def __hash__(self) -> int:
        return hash((self.prefix, self.shards))

    # Shards.

    def shard_of(self, node: str) -> int:
        """The shard of a gateway node (``shard_of(node, shards)``)."""
        return _shard_of(node, self.shards)

    def shard_of_connection(self, connection_id: str) -> int:
        """The shard of a connection: its node's."""
        return _shard_of(node_of(connection_id), self.shards)

    def _node_key(self, name: str, node: str) -> str:
        return self._templates[name].fill(str(_shard_of(node, self.shards)), node)

    def _connection_key(self, name: str, connection_id: str) -> str:
        shard = _shard_of(node_of(connection_id), self.shards)
        return self._templates[name].fill(str(shard), connection_id)

    # One per shard.

    def inbound_stream(self, shard: int) -> str:
        """Events from the gateways of ``shard`` to the workers (consumer group ``workers``)."""
        return self._templates["inbound_stream"].fill(str(shard))

    def inbound_stream_of(self, node: str) -> str:
        """The inbound stream partition the gateway ``node`` writes its events to (its shard's)."""
        return self.inbound_stream(_shard_of(node, self.shards))

    def dead_letters(self, shard: int) -> str:
        """Stream of the events of ``shard`` that used up their attempts, with their last error."""
        return self._templates["dead_letters"].fill(str(shard))

    def delayed(self, shard: int) -> str:
        """Sorted set of the messages of ``shard`` waiting for a retry, scored by due time (ms)."""
        return self._templates["delayed"].fill(str(shard))

    # One per gateway node, in the node's shard.

    def node_stream(self, node: str) -> str:
        """Commands for the connections held by the gateway ``node``."""
        return self._node_key("node_stream", node)

    def node_connections(self, node: str) -> str:
        """Set of the connection ids one gateway holds."""
        return self._node_key("node_connections", node)

    def node_heartbeat(self, node: str) -> str:
        """The Redis time (ms) of the gateway's last heartbeat, in its shard for the reaper's scripts."""
        return self._node_key("node_heartbeat", node)

    def node_reaped(self, node: str) -> str:
        """Set by a reaper that removed the connections of ``node`` (read by that gateway only)."""
        return self._node_key("node_reaped", node)

    def node_sequence(self, node: str) -> str:
        """The number of the last batch of writes ``node`` ran (read by that gateway only)."""
        return self._node_key("node_sequence", node)

    def node_intents(self, node: str) -> str:
        """Sorted set of the index changes of ``node``'s connections not yet made (``membership``)."""
        return self._node_key("node_intents", node)

    # One per connection, in its node's shard.

    def connection(self, connection_id: str) -> str:
        """Hash describing one connection: ``node``, ``user_id``, ``since``, ``addr``."""
        return self._connection_key("connection", connection_id)

    def connection_groups(self, connection_id: str) -> str:
        """Set of the groups of one connection."""
        return self._connection_key("connection_groups", connection_id)

    # Indexes: one slot per user and per group.

    def user_connections(self, user_id: str) -> str:
        """Set of the connection ids of one user, on every gateway."""
        return self._templates["user_connections"].fill(user_id)

    def user_nodes(self, user_id: str) -> str:
        """Hash: node -> how many of the user's connections it holds (whom ``to_user`` writes to)."""
        return self._templates["user_nodes"].fill(user_id)

    def group_connections(self, group: str) -> str:
        """Set of the connection ids of one group, on every gateway."""
        return self._templates["group_connections"].fill(group)

    def group_nodes(self, group: str) -> str:
        """Hash: node -> how many of the group's members it holds (whom ``to_group`` writes to)."""
        return self._templates["group_nodes"].fill(group)

    def group_history(self, group: str) -> str:
        """Stream of the group's last pushes sent with ``history=True`` (``wsq_protocol.history``):
        at most ``WSQ_HISTORY_SIZE`` entries, gone ``WSQ_HISTORY_TTL_S`` after the last one."""
        return self._templates["group_history"].fill(group)

    # Every shard.

    def inbound_streams(self) -> list[str]:
        """The inbound stream of every shard, in shard order."""
        return [self.inbound_stream(shard) for shard in range(self.shards)]


@functools.lru_cache(maxsize=4096)
def _shard_of(node: str, shards: int) -> int:
    return shard_of(node, shards)


@functools.lru_cache(maxsize=64)
def keys_for(prefix: str, shards: int = DEFAULT_SHARDS) -> Keys:
    """``Keys(prefix, shards)``, made once: for callers that hold only the prefix and shards."""
    return Keys(prefix, shards)
