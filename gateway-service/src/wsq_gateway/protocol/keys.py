"""Redis key names, from one prefix (``WSQ_KEY_PREFIX``): the keys of ``protocol/keys.json``
that the gateway uses (the workers' dead-letter and delayed keys are theirs alone)."""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "workers"  # the workers' consumer group on the inbound stream


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def inbound_stream(self) -> str:
        return f"{self.prefix}:inbound"

    @property
    def broadcast_stream(self) -> str:
        return f"{self.prefix}:broadcast"

    def node_stream(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:out"

    def connection(self, connection_id: str) -> str:
        return f"{self.prefix}:conn:{connection_id}"

    def user_connections(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}:conns"

    def node_connections(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:conns"

    def group_connections(self, group: str) -> str:
        return f"{self.prefix}:group:{group}:conns"

    def connection_groups(self, connection_id: str) -> str:
        return f"{self.prefix}:conn:{connection_id}:groups"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    def node_reaped(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:reaped"

    def node_sequence(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:seq"
