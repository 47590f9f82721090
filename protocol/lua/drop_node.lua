-- drop_node.lua: removes a dead gateway's keys once a reaper forgot all of its connections.
-- include: lib/now_ms.lua
--
-- One slot, the node's shard. Only while its heartbeat is older than the timeout (or gone), its
-- set of connections is empty and none of its index intents is left: deletes its heartbeat,
-- its node stream and its sequence key. The caller then removes it from {prefix}:nodes (another
-- slot; a reaper that dies in between leaves it there, and the next one drops it again).
--
-- KEYS[1]  {prefix}:{shard}:node:{node}:alive
-- KEYS[2]  {prefix}:{shard}:node:{node}:conns
-- KEYS[3]  {prefix}:{shard}:node:{node}:intents
-- KEYS[4]  {prefix}:{shard}:node:{node}:out
-- KEYS[5]  {prefix}:{shard}:node:{node}:seq
-- ARGV[1]  heartbeat timeout (ms)
--
-- Reply: 1 removed (or nothing was left); 0 not (heartbeat fresh, connections or intents left).
local seen = redis.call('GET', KEYS[1])
if seen and tonumber(seen) > now_ms() - tonumber(ARGV[1]) then return 0 end
if redis.call('SCARD', KEYS[2]) > 0 or redis.call('ZCARD', KEYS[3]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5])
return 1
