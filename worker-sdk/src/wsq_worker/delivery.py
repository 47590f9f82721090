"""At least once: claims, keep-alive, retries and dead letters (protocol/README.md), without the loops.

The Lua scripts here run in Redis, so each of their steps is atomic whatever the number of
workers: a claimed entry comes with its delivery count, a keep-alive never takes an entry back
from a worker that claimed it, a dead worker's consumer leaves the group only once it holds no
entry, an entry is acknowledged only with all of its writes (and a
batch sent twice writes them once), a due retry moves into the inbound stream exactly once, and
a dead letter is replayed exactly once. The worker (``wsq_worker.worker``) and its flusher
(``wsq_worker.flusher``) run them; the ``wsq-worker dead`` command (``wsq_worker.cli``) lists and
replays dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from wsq_protocol import codec

__all__ = [
    "CLAIM_SCRIPT",
    "COMMIT_SCRIPT",
    "DEAD_LETTER_FIELDS",
    "FORGET_STALE_SCRIPT",
    "KEEP_ALIVE_SCRIPT",
    "MOVE_DUE_SCRIPT",
    "REPLAY_SCRIPT",
    "Claimed",
    "DelayedWrite",
    "dead_letter",
    "delayed_member",
    "parse_claim",
    "parse_forget",
    "parse_move",
]

# Claims entries of the consumer group idle for at least a given time, and reads how often each
# was delivered (XAUTOCLAIM counts this delivery too). KEYS[1]: the inbound stream. ARGV: group,
# consumer, min idle (ms), cursor, count. Returns {next cursor, entries, delivery counts}.
CLAIM_SCRIPT = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  counts[i] = 0
  if entry then  -- Redis 6.2 answers nil for an entry deleted while pending
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    counts[i] = pending[1] and pending[1][4] or 1
  end
end
return {claimed[1], claimed[2], counts}
"""

# Resets the idle time of entries the consumer still owns, without counting a delivery
# (XCLAIM ... JUSTID), and leaves alone those another worker claimed meanwhile. KEYS[1]: the
# inbound stream. ARGV: group, consumer, entry ids. Returns the ids refreshed.
KEEP_ALIVE_SCRIPT = """
local mine = {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    mine[#mine + 1] = ARGV[i]
  end
end
if #mine > 0 then
  local command = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}
  for _, id in ipairs(mine) do
    command[#command + 1] = id
  end
  command[#command + 1] = 'JUSTID'
  redis.call(unpack(command))
end
return mine
"""

# Removes the consumers of dead workers from the group: those idle (no read, claim or keep-alive:
# XINFO CONSUMERS' `idle`) for longer than a live worker ever is, and holding no pending entry.
# XGROUP DELCONSUMER drops a consumer's pending entries, so one that holds any stays until they
# were claimed (then run again) by a live worker. KEYS[1]: the inbound stream. ARGV: group,
# min idle (ms), the caller's consumer (never removed). Returns {name, idle, ...} of those removed.
FORGET_STALE_SCRIPT = """
local removed, min_idle = {}, tonumber(ARGV[2])
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do
    fields[consumer[i]] = consumer[i + 1]
  end
  if fields.pending == 0 and fields.idle > min_idle and fields.name ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields.name)
    removed[#removed + 1] = fields.name
    removed[#removed + 1] = fields.idle
  end
end
return removed
"""

# Writes what the worker's handlers produced and acknowledges their entries, in one script
# per batch (the flusher's): an entry is acknowledged (XACK + XDEL) only when Redis took all of
# its writes, and a batch sent again after a lost connection (it may have run already) writes
# only for the entries still pending. KEYS[1]: the inbound stream. ARGV[1]: the group; ARGV[2]:
# '1' to check that each entry is still pending (a batch sent again), else '0'; then for each
# entry: its id, its number of writes, and each write: '*' and its number of arguments (as in
# the RESP header of the command, which the worker sends as is), or '-' and that number for a
# write on a best-effort basis (its failure does not keep the entry), then the arguments. The command
# WSQ.DELAYED key delay-ms member puts member in the delayed set, due delay-ms from now on the
# Redis server's clock (the clock MOVE_DUE_SCRIPT reads, so the hosts' clocks don't matter).
# A refused required write stops the entry's writes and leaves it pending. Returns {refused,
# skipped, ack error}: refused is flat, {entry number, write number, error} per refused write;
# skipped counts the entries no longer pending; the ack error is '' unless XACK/XDEL failed.
COMMIT_SCRIPT = """
local call, byte, sub, number = redis.pcall, string.byte, string.sub, tonumber
local stream, group, again = KEYS[1], ARGV[1], ARGV[2] == '1'
local refused, acked, skipped = {}, {}, 0
local i, last, entry_number, acks = 3, #ARGV, 0, 0
while i <= last do
  entry_number = entry_number + 1
  local entry, writes = ARGV[i], number(ARGV[i + 1])
  i = i + 2
  local live = true
  if again and #call('XPENDING', stream, group, entry, entry, 1) == 0 then
    live = false
    skipped = skipped + 1
  end
  for write = 1, writes do
    local head = ARGV[i]
    local count = number(sub(head, 2))
    if live then
      local reply
      if ARGV[i + 1] == 'WSQ.DELAYED' then
        local now = redis.call('TIME')
        local due = number(now[1]) * 1000 + math.floor(number(now[2]) / 1000) + number(ARGV[i + 3])
        reply = call('ZADD', ARGV[i + 2], due, ARGV[i + 4])
      else
        reply = call(unpack(ARGV, i + 1, i + count))
      end
      if type(reply) == 'table' and reply.err then
        refused[#refused + 1] = entry_number
        refused[#refused + 1] = write
        refused[#refused + 1] = reply.err
        if byte(head) == 42 then  -- '*': a required write
          live = false
        end
      end
    end
    i = i + 1 + count
  end
  if live then
    acks = acks + 1
    acked[acks] = entry
  end
end
local ack_error = ''
for first = 1, acks, 1000 do
  local ids = {unpack(acked, first, math.min(first + 999, acks))}
  local reply = call('XACK', stream, group, unpack(ids))
  if type(reply) ~= 'table' then
    reply = call('XDEL', stream, unpack(ids))
  end
  if type(reply) == 'table' and reply.err then
    ack_error = reply.err
  end
end
return {refused, skipped, ack_error}
"""

# Moves up to ARGV[1] due members of the delayed set into the inbound stream. KEYS: the delayed
# set, the inbound stream. A member that is not {"fields": {name: string, ...}} is removed and
# returned, so it can't block the others. Returns {members moved, malformed members}.
MOVE_DUE_SCRIPT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
local moved, malformed = 0, {}
for _, member in ipairs(due) do
  local ok, entry = pcall(cjson.decode, member)
  local command = {'XADD', KEYS[2], '*'}
  if ok and type(entry) == 'table' and type(entry.fields) == 'table' then
    for name, value in pairs(entry.fields) do
      if type(name) ~= 'string' or type(value) ~= 'string' then
        ok = false
      end
      command[#command + 1] = name
      command[#command + 1] = value
    end
  else
    ok = false
  end
  if ok and #command > 3 then
    redis.call(unpack(command))
    moved = moved + 1
  else
    malformed[#malformed + 1] = member
  end
  redis.call('ZREM', KEYS[1], member)
end
return {moved, malformed}
"""

# Moves one dead letter back into the inbound stream: its event's fields, without those the dead
# letter added and without ``attempt`` (it starts again at 1). KEYS: the dead-letter stream, the
# inbound stream. ARGV: the entry id, then the names of the fields to drop. Returns 1, or 0 when
# there is no such entry (already replayed, or never was).
REPLAY_SCRIPT = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then
  return 0
end
local drop = {}
for i = 2, #ARGV do
  drop[ARGV[i]] = true
end
local fields = entries[1][2]
local command = {'XADD', KEYS[2], '*'}
for i = 1, #fields, 2 do
  if not drop[fields[i]] then
    command[#command + 1] = fields[i]
    command[#command + 1] = fields[i + 1]
  end
end
redis.call(unpack(command))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""

DEAD_LETTER_FIELDS = ("error", "attempts", "failed_at", "worker")
"""The fields a dead letter adds to its event's."""
REPLAY_DROPS = (*DEAD_LETTER_FIELDS, "attempt")
"""The fields ``REPLAY_SCRIPT`` leaves out of the replayed event."""
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True, slots=True)
class DelayedWrite:
    """``member`` in the delayed set ``key``, due in ``delay_ms`` (``WSQ.DELAYED`` in
    ``COMMIT_SCRIPT``)."""

    key: str
    member: str
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """An entry ``CLAIM_SCRIPT`` took over, and how many times it was delivered (this time included)."""

    entry_id: str
    fields: Mapping[bytes, bytes] | None
    """None when the entry was deleted from the stream while it was pending."""
    delivered: int


def parse_claim(response: Any) -> tuple[str, list[Claimed]]:
    """(next cursor, claimed entries) of a ``CLAIM_SCRIPT`` reply (``bytes``, undecoded)."""
    cursor, entries, counts = response
    claimed = []
    for entry, delivered in zip(entries, counts, strict=True):
        if not entry:  # deleted while pending (Redis 6.2; Redis 7 drops it from the group itself)
            continue
        entry_id, flat = entry
        fields = dict(zip(flat[::2], flat[1::2], strict=True)) if flat else None
        claimed.append(Claimed(_text(entry_id), fields, int(delivered)))
    return _text(cursor), claimed


def parse_forget(response: Any) -> list[tuple[str, int]]:
    """(consumer, idle ms) of each consumer a ``FORGET_STALE_SCRIPT`` reply says it removed."""
    return [
        (name.decode(errors="backslashreplace") if isinstance(name, bytes) else str(name), int(idle))
        for name, idle in zip(response[::2], response[1::2], strict=True)
    ]


def parse_move(response: Any) -> tuple[int, list[str]]:
    """(members moved, malformed members removed) of a ``MOVE_DUE_SCRIPT`` reply."""
    moved, malformed = response
    # Malformed members may be any bytes (not written by wsq): shown, never decoded strictly.
    return int(moved), [
        member.decode(errors="backslashreplace") if isinstance(member, bytes) else str(member)
        for member in malformed
    ]


def delayed_member(entry_id: str, fields: Mapping[str, str], attempt: int) -> str:
    """The delayed-set member re-running the event ``fields`` of inbound entry ``entry_id`` as
    attempt ``attempt``. The entry id (``retry_of``) keeps two retries of equal messages apart."""
    return codec.dumps({"retry_of": entry_id, "fields": {**fields, "attempt": str(attempt)}})


def dead_letter(fields: Mapping[str, str], *, error: str, attempts: int, worker: str) -> dict[str, str]:
    """The dead-letter entry of an event: its fields plus ``error``, ``attempts``, ``failed_at``
    (milliseconds since the epoch) and ``worker`` (the consumer that gave up)."""
    if len(error) > _MAX_ERROR_CHARS:
        error = error[: _MAX_ERROR_CHARS - 1] + "…"
    extra = {
        "error": error,
        "attempts": str(attempts),
        "failed_at": str(time.time_ns() // 1_000_000),
        "worker": worker,
    }
    return {**{name: value for name, value in fields.items() if name not in extra}, **extra}


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of at most ``size`` (a script's arguments stay few)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
