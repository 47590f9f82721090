-- drop_node.lua: removes a dead gateway once a reaper forgot all of its connections.
--
-- Only while its heartbeat is older than the timeout and its set of connections is empty:
-- removes it from {prefix}:nodes and deletes its node stream and its sequence key.
--
-- KEYS[1]  {prefix}:nodes
-- KEYS[2]  {prefix}:node:{node}:conns
-- KEYS[3]  {prefix}:node:{node}:out
-- KEYS[4]  {prefix}:node:{node}:seq
-- ARGV[1]  node
-- ARGV[2]  heartbeat timeout (ms)
--
-- Reply: 1 removed; 0 not (heartbeat fresh, node absent, or connections left).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not seen or tonumber(seen) > now - tonumber(ARGV[2]) then return 0 end
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
return 1
