"""The connection registry in Redis, and the calls of the Lua scripts that keep it exact.

The scripts are the files of ``protocol/lua/`` (``wsq_protocol.scripts``); every key they touch
is built here with ``Keys`` and passed in ``KEYS[]``, all in this node's shard (one Redis
Cluster slot: protocol/README.md, "Slots and shards"). Registering a connection is one script
(``register.lua``: its hash, its node's set and its connect event, all or nothing), after a
reservation in its user's set when it has a user. Forgetting one is a script too
(``forget.lua``): removing its record and appending its single ``disconnect`` event happen
atomically and at most once, and the removals from its user's and groups' sets (other slots)
are recorded as intents, which the gateway's ``Indexes`` then make (``wsq_protocol.membership``).
``reap.lua`` does the same for the connections of a gateway that died without a goodbye, and
``heartbeat.lua`` tells a gateway that it was presumed dead.

The batched scripts are called by ``EVALSHA`` (the batcher loads them again when Redis answers
``NOSCRIPT``), so a connection costs its arguments, not the script.
"""

from __future__ import annotations

from typing import Any

from wsq_protocol.ids import node_of as node_of_connection
from wsq_protocol.keys import Keys
from wsq_protocol.membership import INTEND, Intent, new_token, settle
from wsq_protocol.scripts import connection_keys, run, script

REGISTER = script("register")
SET_USER = script("set_user")
FORGET = script("forget")
REAP = script("reap")
DROP_NODE = script("drop_node")
HEARTBEAT = script("heartbeat")
ENSURE_STREAM = script("ensure_stream")

BATCHED_SCRIPTS = (REGISTER.body, SET_USER.body, FORGET.body, INTEND.body)
"""The scripts the batcher's writes call, loaded at start and again after ``NOSCRIPT``."""

# heartbeat.lua's reply: what Redis knew of the node.
HEARTBEAT_REAPED = 0  # it was reaped (the flag is cleared): close every socket
HEARTBEAT_OK = 1  # it was there
HEARTBEAT_NEW = 2  # it was not there: a first heartbeat, or Redis lost its data

# register.lua's and set_user.lua's replies.
REGISTERED = 1
RESERVATION_LOST = 0  # nothing written: the reservation's intent was settled by a sweep
CONNECTION_GONE = 2  # set_user.lua: the connection was reaped meanwhile

# reap.lua's replies, besides {1, intent...} (forgotten).
NOT_REGISTERED = 0  # the id only left the node's set
NODE_ALIVE = -1  # the node's heartbeat is fresh: stop

REAP_BATCH = 500  # connection ids read, and scripts sent, per round trip of the reaper


def forgotten_intents(reply: Any) -> list[Intent] | None:
    """The intents of a ``forget.lua`` / ``reap.lua`` reply ``{1, intent...}`` (the connection
    was forgotten: its user's and groups' sets are to be left); None for any other reply."""
    if not isinstance(reply, list) or not reply or reply[0] != 1:
        return None
    return [Intent.parse(member) for member in reply[1:]]


def register_command(
    keys: Keys,
    connection_id: str,
    node: str,
    since_ms: int,
    addr: str,
    user_id: str | None,
    token: str,
    event: list[str],
) -> tuple[Any, ...]:
    """The EVALSHA that registers a connection and appends its connect event, atomically. A
    connection with a user was reserved in the user's set first, under ``token``."""
    script_keys = [
        keys.connection(connection_id),
        keys.node_connections(node),
        keys.inbound_stream_of(node),
        keys.node_intents(node),
    ]
    return REGISTER.call(script_keys, connection_id, node, since_ms, addr, user_id or "", token, *event)


def set_user_command(
    keys: Keys, connection_id: str, user_id: str, previous: str | None, token: str
) -> tuple[Any, ...]:
    """The EVALSHA that gives a registered connection the user id the connect hook named (it
    was reserved in that user's set first, under ``token``)."""
    script_keys = [keys.connection(connection_id), keys.node_intents(node_of_connection(connection_id))]
    return SET_USER.call(script_keys, connection_id, user_id, previous or "", token)


def intend_command(keys: Keys, node: str, intents: list[Intent]) -> tuple[Any, ...]:
    """The EVALSHA that records intents (a reservation) before their index is written."""
    return INTEND.call([keys.node_intents(node)], *(intent.member for intent in intents))


def forget_command(keys: Keys, connection_id: str, close_code: int, token: str) -> tuple[Any, ...]:
    """The EVALSHA that forgets a connection and appends its disconnect event: ``{1, intent...}``
    (``forgotten_intents()``) or 0 (already forgotten)."""
    # int(): a CloseCode or aiohttp's WSCloseCode is an int to the type checker, not to the packer.
    return FORGET.call(connection_keys(keys, connection_id), int(close_code), connection_id, token)


def reap_call(
    keys: Keys, node: str, timeout_ms: int, connection_id: str, token: str, *, force: bool = False
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``reap.lua`` for one connection of the dead gateway ``node``."""
    script_keys = [keys.node_heartbeat(node), keys.node_reaped(node), *connection_keys(keys, connection_id)]
    # The id is read from the node's set: its own node is the dead one, or it is not registered.
    script_keys[4] = keys.node_connections(node)
    return script_keys, [timeout_ms, "1" if force else "0", connection_id, node, token]


def drop_node_call(keys: Keys, node: str, timeout_ms: int) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``drop_node.lua``."""
    return (
        [
            keys.node_heartbeat(node),
            keys.node_connections(node),
            keys.node_intents(node),
            keys.node_stream(node),
            keys.node_sequence(node),
        ],
        [timeout_ms],
    )


def ensure_stream_command(keys: Keys, node: str) -> tuple[Any, ...]:
    """The EVAL that creates the node's stream, empty, unless it exists. Run on each new Redis
    connection, which may be to a Redis that just restarted without its scripts: EVAL, not EVALSHA."""
    return ENSURE_STREAM.eval([keys.node_stream(node)])


def heartbeat_call(keys: Keys, node: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``heartbeat.lua``."""
    return [keys.node_stream(node), keys.node_heartbeat(node), keys.node_reaped(node)], []


def node_keys(keys: Keys, node: str) -> list[str]:
    """The keys a gateway deletes when it leaves (all in its shard)."""
    return [
        keys.node_stream(node),
        keys.node_reaped(node),
        keys.node_sequence(node),
        keys.node_heartbeat(node),
    ]


async def forget(redis: Any, keys: Keys, connection_id: str, close_code: int) -> int:
    """Forget a connection from outside its gateway (operators, tests): ``forget.lua``, then its
    user's and groups' sets. 1 when it was forgotten (its disconnect event written), 0 when it
    was not registered."""
    reply = await run(
        redis, FORGET, connection_keys(keys, connection_id), [int(close_code), connection_id, new_token()]
    )
    intents = forgotten_intents(reply)
    if intents is None:
        return 0
    await settle(redis, keys, node_of_connection(connection_id), intents, holds=False)
    return 1
