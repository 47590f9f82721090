"""A user's and a group's sets of connections (the indexes), kept in line with the registry.

A connection's record — its hash, its groups, its node's set, its events — lives in the slot of
its node's shard; each user's and each group's set lives in a slot of its own
(protocol/README.md, "Slots and shards"). No script can change both at once on a Redis Cluster,
so a change of membership is a sequence of steps, each idempotent, in this order:

1. A script in the node's shard changes the record and records an **intent** (``lib/intents.lua``)
   in ``{prefix}:{shard}:node:{node}:intents``: which index must change.
2. ``index.lua`` adds the connection to the index, or removes it (one slot, the index's).
3. ``settle.lua`` (the shard again) reads whether the membership still holds: if the index says
   the same, the intent is removed; if not (the connection closed meanwhile, say), the index is
   written again with what holds, and settled again.

A process that dies between the steps leaves its intent: the gateway holding the connection
settles its node's intents older than ``SWEEP_AGE_MS``, and a reaper settles those of a dead
gateway before it removes it. Adding to an index happens before a connection is visible with
that user (``register.lua`` and ``set_user.lua`` check a reservation made first, within the
user's limit), and removing after it is gone, so ``to_user()`` never misses a live connection;
an index may name a connection that just went away, which its gateway ignores.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from wsq_protocol.ids import node_of
from wsq_protocol.keys import Keys
from wsq_protocol.scripts import run, run_many, script

__all__ = [
    "INDEX",
    "INTEND",
    "SETTLE",
    "SWEEP_AGE_MS",
    "Intent",
    "new_token",
    "redis_time_ms",
    "reserve",
    "settle",
    "sweep",
]

log = logging.getLogger("wsq.protocol.membership")

INDEX = script("index")
INTEND = script("intend")
SETTLE = script("settle")

SWEEP_AGE_MS: Final[int] = 60_000
"""An intent this old was left by a process that died between the steps: settled by a sweep."""
MAX_ROUNDS: Final[int] = 16
"""Rounds of writing an index and settling, for memberships that keep changing meanwhile."""
SWEEP_BATCH: Final[int] = 500

# index.lua's replies.
INDEX_FULL: Final[int] = -1


def new_token() -> str:
    """A token for the intents of one flow (so that two flows on one membership settle apart)."""
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Intent:
    """One index change to make: ``kind`` ``u`` (the set of user ``name``) or ``g`` (of group ``name``)."""

    kind: Literal["u", "g"]
    connection_id: str
    token: str
    name: str

    @classmethod
    def parse(cls, member: bytes | str) -> Intent:
        text = member.decode() if isinstance(member, bytes) else member
        kind, connection_id, token, name = text.split("\n", 3)
        if kind not in ("u", "g"):
            raise ValueError(f"not an intent: {text!r}")
        return cls(kind, connection_id, token, name)  # type: ignore[arg-type]

    @property
    def member(self) -> str:
        """The intent as ``lib/intents.lua`` writes it."""
        return f"{self.kind}\n{self.connection_id}\n{self.token}\n{self.name}"

    @property
    def node(self) -> str:
        return node_of(self.connection_id)

    def index_keys(self, keys: Keys) -> list[str]:
        """KEYS of ``index.lua`` for this intent's index."""
        if self.kind == "u":
            return [keys.user_connections(self.name), keys.user_nodes(self.name)]
        return [keys.group_connections(self.name), keys.group_nodes(self.name)]


def index_call(keys: Keys, intent: Intent, add: bool, limit: int = 0) -> tuple[Any, list[str], list[Any]]:
    """``index.lua``'s script, KEYS and ARGV: add the intent's connection to its index, or remove it."""
    return INDEX, intent.index_keys(keys), ["+" if add else "-", intent.connection_id, intent.node, limit]


async def reserve(client: Any, keys: Keys, intent: Intent, limit: int) -> bool:
    """Step 2 of a reservation: add the connection to its user's set unless that set already
    holds ``limit`` connections (0: no limit). The intent was recorded first (``INTEND``)."""
    script_, script_keys, args = index_call(keys, intent, True, limit)
    return bool(await run(client, script_, script_keys, args) != INDEX_FULL)


async def settle(
    client: Any,
    keys: Keys,
    node: str,
    intents: Sequence[Intent],
    *,
    holds: bool | None = None,
) -> list[Intent]:
    """Steps 2 and 3 for ``intents`` (all of connections of ``node``): write each index as the
    registry says, until settle.lua removes the intent. ``holds``: what the caller knows holds
    (False after forgetting a connection), else it is read first. Returns the intents still
    unsettled after ``MAX_ROUNDS`` (left for the sweep)."""
    todo = list(intents)
    if not todo:
        return []
    if holds is None:
        truths = await _settle(client, keys, node, todo, None)
    else:
        truths = [holds] * len(todo)
    for _ in range(MAX_ROUNDS):
        await _write_indexes(client, keys, todo, truths)
        now = await _settle(client, keys, node, todo, truths)
        unsettled = [(i, t) for i, w, t in zip(todo, truths, now, strict=True) if w != t]
        if not unsettled:
            return []
        todo, truths = [i for i, _ in unsettled], [t for _, t in unsettled]
    log.warning("memberships kept changing while their indexes were written: left for the sweep")
    return todo


async def sweep(client: Any, keys: Keys, node: str, *, older_than_ms: int = SWEEP_AGE_MS) -> int:
    """Settle the intents of ``node`` older than ``older_than_ms`` (0: all of them): those of a
    process that died between the steps. The number settled."""
    intents_key = keys.node_intents(node)
    cutoff = await redis_time_ms(client) - older_than_ms
    raw: Any = await client.zrangebyscore(intents_key, "-inf", cutoff, start=0, num=SWEEP_BATCH)
    intents: list[Intent] = []
    for member in raw:
        try:
            intents.append(Intent.parse(member))
        except (ValueError, UnicodeDecodeError):
            log.warning("removed a malformed index intent: %r", member)
            await client.zrem(intents_key, member)
    left = await settle(client, keys, node, intents)
    return len(intents) - len(left)


async def _write_indexes(client: Any, keys: Keys, intents: Sequence[Intent], truths: Sequence[bool]) -> None:
    replies = await run_many(
        client, [index_call(keys, intent, add) for intent, add in zip(intents, truths, strict=True)]
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


async def _settle(
    client: Any, keys: Keys, node: str, intents: Sequence[Intent], written: Sequence[bool] | None
) -> list[bool]:
    script_keys: list[str] = [keys.node_intents(node)]
    args: list[str] = []
    for n, intent in enumerate(intents):
        script_keys += [keys.connection(intent.connection_id), keys.connection_groups(intent.connection_id)]
        args += [intent.member, "?" if written is None else ("1" if written[n] else "0")]
    reply: Any = await run(client, SETTLE, script_keys, args)
    return [bool(int(value)) for value in reply]


async def redis_time_ms(client: Any) -> int:
    """The Redis server's clock in ms (one node's, on a Redis Cluster: their clocks agree as
    the hosts' do; only ages of minutes are measured with it)."""
    reply: Any = await client.time()
    if isinstance(reply, dict):  # a RedisCluster asked several nodes
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000
