"""The connection registry in Redis, and the Lua scripts that keep it exact.

Registering a connection is one script (its hash, its node's and user's sets and its
connect event, all or nothing). Forgetting one is a script too, so that removing it from
every set — its groups included, which publishers may change at any moment — and
appending its single ``disconnect`` event happen atomically and at most once. The same script body serves the
reaper, which forgets the connections of a gateway that died without a goodbye, and the
heartbeat, which tells a gateway that it was presumed dead.

Scripts build key names from the prefix, so they need a single Redis (not a cluster),
like the publishers' fan-out script. They are called by ``EVALSHA`` (the batcher loads them
again when Redis answers ``NOSCRIPT``), so a connection costs its arguments, not the script.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from wsq_protocol.codes import PROTOCOL_VERSION
from wsq_protocol.keys import REAPED_TTL_S, Keys

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# forget(prefix, connection_id, ts, close_code): 1 if it forgot the connection, 0 if it
# was already gone (so a connection never gets two disconnect events).
_FORGET = """
local function forget(prefix, cid, ts, code)
  local conn_key = prefix .. ':conn:' .. cid
  local flat = redis.call('HGETALL', conn_key)
  if #flat == 0 then return 0 end
  local info = {}
  for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
  redis.call('DEL', conn_key)
  redis.call('SREM', prefix .. ':node:' .. info.node .. ':conns', cid)
  if info.user_id then redis.call('SREM', prefix .. ':user:' .. info.user_id .. ':conns', cid) end
  local groups_key = conn_key .. ':groups'
  for _, group in ipairs(redis.call('SMEMBERS', groups_key)) do
    redis.call('SREM', prefix .. ':group:' .. group .. ':conns', cid)
  end
  redis.call('DEL', groups_key)
  local event = {'v', '%(version)s', 'type', 'disconnect', 'connection_id', cid, 'node', info.node,
                 'ts', ts, 'addr', info.addr or '', 'close_code', code}
  if info.user_id then
    table.insert(event, 'user_id')
    table.insert(event, info.user_id)
  end
  redis.call('XADD', prefix .. ':inbound', '*', unpack(event))
  return 1
end
""".replace("%(version)s", PROTOCOL_VERSION)

# ARGV: prefix, connection_id, close_code
FORGET_SCRIPT = _NOW + _FORGET + "return forget(ARGV[1], ARGV[2], tostring(now_ms()), ARGV[3])\n"

# How long a reaped gateway's flag ({prefix}:node:<id>:reaped) lives. A gateway that comes back
# reads it at its first heartbeat Redis takes (within WSQ_NODE_HEARTBEAT_S + the Redis timeout
# of reaching Redis again); one away for longer than half of this, by its own clock, acts as
# reaped without it (Liveness), so the flag may expire: dead gateways' flags do not pile up.

# ARGV: prefix, node, timeout_ms, batch, force ('1': reap even a fresh node — our own
# previous incarnation). Returns how many connections it forgot; 0 once the node is gone.
REAP_SCRIPT = (
    _NOW
    + _FORGET
    + """
local prefix, node, timeout_ms, batch, force = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local nodes_key = prefix .. ':nodes'
if force ~= '1' then
  local seen = redis.call('ZSCORE', nodes_key, node)
  if not seen or tonumber(seen) > now - timeout_ms then return 0 end
end
local conns_key = prefix .. ':node:' .. node .. ':conns'
local popped = redis.call('SPOP', conns_key, batch)
local forgotten = 0
for _, cid in ipairs(popped) do
  forgotten = forgotten + forget(prefix, cid, tostring(now), '1006')
end
if #popped > 0 and force ~= '1' then
  redis.call('SET', prefix .. ':node:' .. node .. ':reaped', '1', 'EX', %(reaped_ttl_s)d)
end
if redis.call('SCARD', conns_key) == 0 and force ~= '1' then
  redis.call('ZREM', nodes_key, node)
  redis.call('DEL', prefix .. ':node:' .. node .. ':out', prefix .. ':node:' .. node .. ':seq')
end
return #popped
"""
).replace("%(reaped_ttl_s)d", str(REAPED_TTL_S))

# A live gateway's stream always exists, empty or not: writers append to node streams with
# NOMKSTREAM, so that a push to a dead gateway's connection does not create its stream again.
# Created by the heartbeat (at start, then every WSQ_NODE_HEARTBEAT_S) and before anything else
# on every new connection of the gateway's writer (ENSURE_STREAM_SCRIPT), should Redis have
# lost it: before any event of this gateway, so before any reply to one.
_ENSURE_STREAM = """
local function ensure_stream(key)
  if redis.call('EXISTS', key) == 0 then
    redis.call('XADD', key, '0-1', 'created', '1')
    redis.call('XDEL', key, '0-1')
  end
end
"""

# KEYS[1]: the gateway's node stream.
ENSURE_STREAM_SCRIPT = _ENSURE_STREAM + "ensure_stream(KEYS[1])\n"

# ARGV: prefix, node. Writes the heartbeat, and says what Redis knew of the node:
HEARTBEAT_REAPED = 0  # it was reaped (the flag is cleared): close every socket
HEARTBEAT_OK = 1  # it was there
HEARTBEAT_NEW = 2  # it was not there: a first heartbeat, or Redis lost its data
HEARTBEAT_SCRIPT = (
    _NOW
    + _ENSURE_STREAM
    + """
local prefix, node = ARGV[1], ARGV[2]
ensure_stream(prefix .. ':node:' .. node .. ':out')
local added = redis.call('ZADD', prefix .. ':nodes', now_ms(), node)
if redis.call('DEL', prefix .. ':node:' .. node .. ':reaped') == 1 then return 0 end
if added == 1 then return 2 end
return 1
"""
)

# ARGV: prefix, connection_id, node, since, addr, user_id ('' when anonymous), the most
# connections one user may hold (0: no limit), then the connect event's fields and values.
# The registry entries and the event are written together or not at all, so a connection
# whose registration failed either has both (and its clean-up emits the matching
# disconnect) or neither. The user's limit is checked in the same step: a burst of
# connections from one user, on any number of gateways, cannot pass it.
REGISTERED = 1
USER_FULL = 0  # nothing written: the user already holds that many connections
REGISTER_SCRIPT = """
local prefix, cid, node, since, addr, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local limit = tonumber(ARGV[7])
local conn_key = prefix .. ':conn:' .. cid
if user ~= '' then
  local user_key = prefix .. ':user:' .. user .. ':conns'
  if limit > 0 and redis.call('SCARD', user_key) >= limit then return 0 end
  redis.call('HSET', conn_key, 'node', node, 'since', since, 'addr', addr, 'user_id', user)
  redis.call('SADD', user_key, cid)
else
  redis.call('HSET', conn_key, 'node', node, 'since', since, 'addr', addr)
end
redis.call('SADD', prefix .. ':node:' .. node .. ':conns', cid)
redis.call('XADD', prefix .. ':inbound', '*', unpack(ARGV, 8))
return 1
"""

# ARGV: prefix, connection_id, user_id, the previous user_id ('' when none), the most
# connections one user may hold (0: no limit). The connect hook named the connection's
# user: REGISTERED, or USER_FULL (nothing written). A connection already forgotten (reaped
# meanwhile) is left forgotten.
SET_USER_SCRIPT = """
local prefix, cid, user, previous, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local conn_key = prefix .. ':conn:' .. cid
local user_key = prefix .. ':user:' .. user .. ':conns'
if redis.call('EXISTS', conn_key) == 0 then return 1 end
if limit > 0 and redis.call('SISMEMBER', user_key, cid) == 0 and redis.call('SCARD', user_key) >= limit then
  return 0
end
redis.call('HSET', conn_key, 'user_id', user)
redis.call('SADD', user_key, cid)
if previous ~= '' then redis.call('SREM', prefix .. ':user:' .. previous .. ':conns', cid) end
return 1
"""

REAP_BATCH = 500  # connections forgotten per script run: keeps each run short


class Script(NamedTuple):
    body: str
    sha: str

    @classmethod
    def of(cls, body: str) -> Script:
        return cls(body, hashlib.sha1(body.encode()).hexdigest())

    def call(self, numkeys: int, *args: Any) -> tuple[Any, ...]:
        """The ``EVALSHA`` command running this script."""
        return ("EVALSHA", self.sha, str(numkeys), *args)


REGISTER = Script.of(REGISTER_SCRIPT)
SET_USER = Script.of(SET_USER_SCRIPT)
FORGET = Script.of(FORGET_SCRIPT)
BATCHED_SCRIPTS = (REGISTER.body, SET_USER.body, FORGET.body)
"""The scripts the batcher's writes call, loaded at start and again after ``NOSCRIPT``."""


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
    return REGISTER.call(
        0,
        keys.prefix,
        connection_id,
        node,
        since_ms,
        addr,
        user_id or "",
        max_per_user,
        *event,
    )


def set_user_command(
    keys: Keys, connection_id: str, user_id: str, previous: str | None, max_per_user: int
) -> tuple[Any, ...]:
    """The EVALSHA that gives a registered connection the user id the connect hook named."""
    return SET_USER.call(0, keys.prefix, connection_id, user_id, previous or "", max_per_user)


def forget_command(keys: Keys, connection_id: str, close_code: int) -> tuple[Any, ...]:
    """The EVALSHA that forgets a connection and appends its disconnect event."""
    # int(): a CloseCode or aiohttp's WSCloseCode is an int to the type checker, not to the packer.
    return FORGET.call(0, keys.prefix, connection_id, int(close_code))


def reap_args(keys: Keys, node: str, timeout_ms: int, *, force: bool = False) -> list[Any]:
    """ARGV of ``REAP_SCRIPT``."""
    return [keys.prefix, node, timeout_ms, REAP_BATCH, "1" if force else "0"]


def ensure_stream_command(keys: Keys, node: str) -> tuple[Any, ...]:
    """The EVAL that creates the node's stream, empty, unless it exists. Run on each new Redis
    connection, which may be to a Redis that just restarted without its scripts: EVAL, not EVALSHA."""
    return ("EVAL", ENSURE_STREAM_SCRIPT, 1, keys.node_stream(node))


def heartbeat_args(keys: Keys, node: str) -> list[Any]:
    """ARGV of ``HEARTBEAT_SCRIPT``."""
    return [keys.prefix, node]
