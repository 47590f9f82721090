-- join.lua: adds a connection to a group and tells its gateway.
-- include: lib/now_ms.lua
-- include: lib/intents.lua
--
-- One slot, the connection's shard: atomic with the gateway's clean-up of a connection
-- (forget.lua), so a join never outlives its connection. The group's own set (another slot)
-- is the caller's next step, recorded here as an intent.
--
-- KEYS[1]  {prefix}:{shard}:conn:{connection_id}
-- KEYS[2]  {prefix}:{shard}:conn:{connection_id}:groups
-- KEYS[3]  {prefix}:{shard}:node:{node}:out          (the node of the connection id)
-- KEYS[4]  {prefix}:{shard}:node:{node}:intents
-- ARGV[1]  connection id
-- ARGV[2]  group
-- ARGV[3]  MAXLEN ~ cap of node streams (100000)
-- ARGV[4]  the caller's token for the intent
-- ARGV[5..] the join command's fields and values
--
-- Reply: {1, intent} joined (command appended, NOMKSTREAM; settle the intent); 1 it was a
-- member already (command appended again, no intent); 0 the connection is not registered
-- (gone, or never was): nothing written.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local added = redis.call('SADD', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 5))
if added == 0 then return 1 end
local pending = intent('g', ARGV[1], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[4], now_ms(), pending)
return {1, pending}
