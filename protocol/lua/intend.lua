-- intend.lua: records index intents (see lib/intents.lua) before the index is changed: a
-- connection's reservation in its user's set, before index.lua and register.lua or set_user.lua.
--
-- One slot, the node's shard. The score is Redis' clock, as in every script that records intents.
--
-- KEYS[1]  {prefix}:{shard}:node:{node}:intents
-- ARGV[1..] the intents
--
-- Reply: the number of intents recorded.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = 0
for i = 1, #ARGV do added = added + redis.call('ZADD', KEYS[1], now, ARGV[i]) end
return added
