"""The connection registry in Redis, and the calls of the Lua scripts that keep it exact.

The scripts are the files of ``protocol/lua/`` (``wsq_protocol.scripts``); every key they touch
is built here with ``Keys`` and passed in ``KEYS[]``. Registering a connection is one script
(``register.lua``: its hash, its node's and user's sets and its connect event, all or nothing).
Forgetting one is a script too (``forget.lua``), so that removing it from every set — its
groups included, which publishers may change at any moment — and appending its single
``disconnect`` event happen atomically and at most once. The caller passes the keys of the
connection's user and groups as it knows them; the script checks them, and when they are out
of date (a publisher joined a group meanwhile) it writes nothing and answers what it found
(``Found``), and the caller calls it again with those. ``reap.lua`` does the same for the
connections of a gateway that died without a goodbye, and ``heartbeat.lua`` tells a gateway
that it was presumed dead.

The batched scripts are called by ``EVALSHA`` (the batcher loads them again when Redis answers
``NOSCRIPT``), so a connection costs its arguments, not the script.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wsq_protocol.keys import Keys
from wsq_protocol.scripts import STALE, connection_keys, script

REGISTER = script("register")
SET_USER = script("set_user")
FORGET = script("forget")
REAP = script("reap")
DROP_NODE = script("drop_node")
HEARTBEAT = script("heartbeat")
ENSURE_STREAM = script("ensure_stream")

BATCHED_SCRIPTS = (REGISTER.body, SET_USER.body, FORGET.body)
"""The scripts the batcher's writes call, loaded at start and again after ``NOSCRIPT``."""

# heartbeat.lua's reply: what Redis knew of the node.
HEARTBEAT_REAPED = 0  # it was reaped (the flag is cleared): close every socket
HEARTBEAT_OK = 1  # it was there
HEARTBEAT_NEW = 2  # it was not there: a first heartbeat, or Redis lost its data

# register.lua's and set_user.lua's reply.
REGISTERED = 1
USER_FULL = 0  # nothing written: the user already holds that many connections

# reap.lua's reply, besides a stale one.
REAPED = 1  # forgotten, with its disconnect event
NOT_REGISTERED = 0  # the id only left the node's set
NODE_ALIVE = -1  # the node's heartbeat is fresh (or it is not in the set of nodes): stop

REAP_BATCH = 500  # connection ids read, and scripts sent, per round trip of the reaper
MAX_STALE_RETRIES = 16
"""How often a reap whose keys were out of date is sent again with what the script found, in
one round of the reaper (the next round takes the rest); a closing connection's own forget is
sent again until it runs, with a warning every this many times. Each retry carries the registry
as it was one round trip earlier, so only groups changing that often, that fast, need more."""


@dataclass(frozen=True, slots=True)
class Found:
    """What ``forget.lua`` or ``reap.lua`` found registered, when the caller's keys were stale."""

    node: str
    user_id: str | None
    groups: tuple[str, ...]


def found(reply: Any) -> Found | None:
    """The ``Found`` of a stale reply (``{'stale', node, user, group...}``); None for any other."""
    if not isinstance(reply, list) or not reply or _bytes(reply[0]) != STALE:
        return None
    node, user, *groups = (_text(item) for item in reply[1:])
    return Found(node, user or None, tuple(groups))


def register_command(
    keys: Keys,
    connection_id: str,
    node: str,
    since_ms: int,
    addr: str,
    user_id: str | None,
    max_per_user: int,
    event: list[str],
) -> tuple[Any, ...]:
    """The EVALSHA that registers a connection and appends its connect event, atomically."""
    script_keys = [keys.connection(connection_id), keys.node_connections(node), keys.inbound_stream]
    if user_id:
        script_keys.append(keys.user_connections(user_id))
    return REGISTER.call(
        script_keys, connection_id, node, since_ms, addr, user_id or "", max_per_user, *event
    )


def set_user_command(
    keys: Keys, connection_id: str, user_id: str, previous: str | None, max_per_user: int
) -> tuple[Any, ...]:
    """The EVALSHA that gives a registered connection the user id the connect hook named."""
    script_keys = [keys.connection(connection_id), keys.user_connections(user_id)]
    if previous:
        script_keys.append(keys.user_connections(previous))
    return SET_USER.call(script_keys, connection_id, user_id, previous or "", max_per_user)


def forget_command(
    keys: Keys,
    connection_id: str,
    close_code: int,
    node: str,
    user_id: str | None,
    groups: Iterable[str] = (),
) -> tuple[Any, ...]:
    """The EVALSHA that forgets a connection and appends its disconnect event: 1, 0 (already
    forgotten), or a stale reply (``found()``) when ``node``, ``user_id`` or ``groups`` are not
    what the registry holds."""
    script_keys, args = connection_keys(keys, connection_id, node, user_id, groups)
    # int(): a CloseCode or aiohttp's WSCloseCode is an int to the type checker, not to the packer.
    return FORGET.call(script_keys, int(close_code), *args)


def reap_call(
    keys: Keys,
    node: str,
    timeout_ms: int,
    connection_id: str,
    user_id: str | None,
    groups: Iterable[str],
    *,
    force: bool = False,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``reap.lua`` for one connection of the dead gateway ``node``."""
    script_keys, args = connection_keys(keys, connection_id, node, user_id, groups)
    return [keys.nodes, keys.node_reaped(node), *script_keys], [timeout_ms, "1" if force else "0", *args]


def drop_node_call(keys: Keys, node: str, timeout_ms: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``drop_node.lua``."""
    return (
        [keys.nodes, keys.node_connections(node), keys.node_stream(node), keys.node_sequence(node)],
        [node, timeout_ms],
    )


def ensure_stream_command(keys: Keys, node: str) -> tuple[Any, ...]:
    """The EVAL that creates the node's stream, empty, unless it exists. Run on each new Redis
    connection, which may be to a Redis that just restarted without its scripts: EVAL, not EVALSHA."""
    return ENSURE_STREAM.eval([keys.node_stream(node)])


def heartbeat_call(keys: Keys, node: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``heartbeat.lua``."""
    return [keys.node_stream(node), keys.nodes, keys.node_reaped(node)], [node]


async def forget(redis: Any, keys: Keys, connection_id: str, close_code: int) -> int:
    """Forget a connection from outside its gateway (operators, tests): read its node, user and
    groups, then run ``forget.lua`` (again with what it found, while that was stale). 1 when
    it was forgotten (its disconnect event written), 0 when it was not registered."""
    [current] = await read_registered(redis, keys, [connection_id])
    run = redis.register_script(FORGET.body)
    for _ in range(MAX_STALE_RETRIES + 1):
        script_keys, args = connection_keys(
            keys, connection_id, current.node, current.user_id, current.groups
        )
        reply = await run(keys=script_keys, args=[int(close_code), *args])
        stale = found(reply)
        if stale is None:
            return int(reply)
        current = stale
    raise RuntimeError(f"the groups of connection {connection_id} kept changing: it was not forgotten")


async def read_registered(redis: Any, keys: Keys, connection_ids: list[str]) -> list[Found]:
    """What the registry holds of each connection (node, user, groups; node ``""`` when it is
    not registered), read in one round trip: the keys for ``forget.lua`` or ``reap.lua``."""
    pipe = redis.pipeline(transaction=False)
    for connection_id in connection_ids:
        pipe.hmget(keys.connection(connection_id), "node", "user_id")
        pipe.smembers(keys.connection_groups(connection_id))
    read = await pipe.execute()
    return [
        Found(_text(node or b""), _text(user) if user else None, tuple(sorted(_text(g) for g in groups)))
        for (node, user), groups in zip(read[::2], read[1::2], strict=True)
    ]


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: Any) -> str:
    return value.decode(errors="strict") if isinstance(value, bytes) else str(value)
