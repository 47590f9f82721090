-- reap.lua: forgets one connection of a dead gateway, with its disconnect event (close code 1006).
-- include: lib/now_ms.lua
-- include: lib/intents.lua
-- include: lib/forget.lua
--
-- Run by a surviving gateway for each id of {prefix}:{shard}:node:{node}:conns (read with
-- SRANDMEMBER). Only while the node's heartbeat is older than the timeout (unless forced: a
-- gateway starting with the node id of its previous incarnation). An id whose hash is gone, or
-- names another node, just leaves the node's set. One slot, the dead node's shard.
--
-- KEYS[1]  {prefix}:{shard}:node:{node}:alive        (its heartbeat)
-- KEYS[2]  {prefix}:{shard}:node:{node}:reaped       (set, EX 3600, when not forced)
-- KEYS[3]  {prefix}:{shard}:conn:{connection_id}     (KEYS[3..7]: as forget.lua's KEYS[1..5])
-- KEYS[4]  {prefix}:{shard}:conn:{connection_id}:groups
-- KEYS[5]  {prefix}:{shard}:node:{node}:conns        (the dead node's)
-- KEYS[6]  {prefix}:{shard}:inbound
-- KEYS[7]  {prefix}:{shard}:node:{node}:intents
-- ARGV[1]  heartbeat timeout (ms)
-- ARGV[2]  '1' to reap even a node whose heartbeat is fresh, else '0'
-- ARGV[3]  connection id
-- ARGV[4]  node (the dead gateway)
-- ARGV[5]  token of the intents it records
--
-- Reply: {1, intent...} forgotten (as forget.lua); 0 not registered on that node (the id left
-- the node's set); -1 the node's heartbeat is fresh (nothing written: stop reaping it).
local REAPED_TTL_S = 3600  -- keys.json expire_s.node_reaped (a test checks)
local now = now_ms()
local forced = ARGV[2] == '1'
if not forced then
  local seen = redis.call('GET', KEYS[1])
  if seen and tonumber(seen) > now - tonumber(ARGV[1]) then return -1 end
end
local info = read_connection(3)
local reply
if not info or info.node ~= ARGV[4] then
  if redis.call('SREM', KEYS[5], ARGV[3]) == 0 then return 0 end
  reply = 0
else
  reply = remove(3, ARGV[3], ARGV[5], info, '1006', now)
end
if not forced then redis.call('SET', KEYS[2], '1', 'EX', REAPED_TTL_S) end
return reply
