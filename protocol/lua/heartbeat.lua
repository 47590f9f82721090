-- heartbeat.lua: a gateway's heartbeat, which also says what Redis knew of the gateway.
-- include: lib/now_ms.lua
-- include: lib/ensure_stream.lua
--
-- One slot, the node's shard. Creates the node stream (empty) unless it exists, writes the
-- heartbeat (Redis' clock, so the hosts' clocks don't matter), and clears the reaped flag. The
-- caller then writes the same time as the node's score in {prefix}:nodes (another slot), where
-- reapers look for dead gateways; reap.lua and drop_node.lua check this key, in the shard.
--
-- KEYS[1]  {prefix}:{shard}:node:{node}:out
-- KEYS[2]  {prefix}:{shard}:node:{node}:alive
-- KEYS[3]  {prefix}:{shard}:node:{node}:reaped
--
-- Reply: {state, now}: state 0 the node was reaped (flag cleared: close every socket); 1 it
-- was there; 2 it was not (a first heartbeat, or Redis lost its data); now: the time written (ms).
ensure_stream(KEYS[1])
local now = now_ms()
local seen = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], now)
if redis.call('DEL', KEYS[3]) == 1 then return {0, now} end
if not seen then return {2, now} end
return {1, now}
