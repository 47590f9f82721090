-- commit.lua: writes what a worker's handlers produced and acknowledges their entries, in one
-- script per batch: an entry is acknowledged (XACK + XDEL) only when Redis took all of its
-- writes, and a batch sent again after a lost connection (it may have run already) writes only
-- for the entries still pending.
--
-- The writes are commands packed by the worker (XADD to node streams, the dead-letter stream;
-- WSQ.DELAYED to the delayed set), each command's key its second argument. Every key a write
-- touches is declared in KEYS too (KEYS[2..]): a write to any other key is refused ("ERR key
-- not declared in KEYS"), as Redis Cluster needs.
--
-- KEYS[1]  {prefix}:{shard}:inbound
-- KEYS[2..] every key the writes touch (node streams, {prefix}:{shard}:dead, {prefix}:{shard}:delayed), once each
-- ARGV[1]  consumer group (workers)
-- ARGV[2]  '1' to check that each entry is still pending (a batch sent again), else '0'
-- ARGV[3..] for each entry: its id, its number of writes, and each write: '*' and its number
--          of arguments (as in the RESP header of the command, which the worker sends as is),
--          or '-' and that number for a best-effort write (its failure does not keep the
--          entry), then the arguments. The command WSQ.DELAYED key delay-ms member puts
--          member in the delayed set, due delay-ms from now on the Redis server's clock (the
--          clock move_due.lua reads, so the hosts' clocks don't matter). A refused required
--          write stops the entry's writes and leaves it pending.
--
-- Reply: {refused, skipped, ack error}: refused is flat, {entry number, write number, error}
-- per refused write; skipped counts the entries no longer pending; the ack error is '' unless
-- XACK/XDEL failed.
local call, byte, sub, number = redis.pcall, string.byte, string.sub, tonumber
local stream, group, again = KEYS[1], ARGV[1], ARGV[2] == '1'
local refused, acked, skipped = {}, {}, 0
local declared = {}
for k = 2, #KEYS do declared[KEYS[k]] = true end
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
      if not declared[ARGV[i + 2]] then
        reply = {err = 'ERR key not declared in KEYS: ' .. ARGV[i + 2]}
      elseif ARGV[i + 1] == 'WSQ.DELAYED' then
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
