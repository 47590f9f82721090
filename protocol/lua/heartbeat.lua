-- heartbeat.lua: a gateway's heartbeat, which also says what Redis knew of the gateway.
-- include: lib/now_ms.lua
-- include: lib/ensure_stream.lua
--
-- Creates the node stream (empty) unless it exists, writes the heartbeat (Redis' clock, so
-- the hosts' clocks don't matter), and clears the reaped flag.
--
-- KEYS[1]  {prefix}:node:{node}:out
-- KEYS[2]  {prefix}:nodes
-- KEYS[3]  {prefix}:node:{node}:reaped
-- ARGV[1]  node
--
-- Reply: 0 the node was reaped (flag cleared: close every socket); 1 it was there;
-- 2 it was not in {prefix}:nodes (a first heartbeat, or Redis lost its data).
ensure_stream(KEYS[1])
local added = redis.call('ZADD', KEYS[2], now_ms(), ARGV[1])
if redis.call('DEL', KEYS[3]) == 1 then return 0 end
if added == 1 then return 2 end
return 1
