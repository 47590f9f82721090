-- leave.lua: removes a connection from a group and tells its gateway.
-- include: lib/now_ms.lua
-- include: lib/intents.lua
--
-- One slot, the connection's shard; the group's own set is the caller's next step (an intent).
--
-- KEYS[1]  {prefix}:{shard}:conn:{connection_id}     (unused: the same KEYS as join.lua)
-- KEYS[2]  {prefix}:{shard}:conn:{connection_id}:groups
-- KEYS[3]  {prefix}:{shard}:node:{node}:out          (the node of the connection id)
-- KEYS[4]  {prefix}:{shard}:node:{node}:intents
-- ARGV[1]  connection id
-- ARGV[2]  group
-- ARGV[3]  MAXLEN ~ cap of node streams (100000)
-- ARGV[4]  the caller's token for the intent
-- ARGV[5..] the leave command's fields and values
--
-- Reply: {1, intent} it was a member (command appended, NOMKSTREAM; settle the intent); 0 it
-- was not (nothing written).
if redis.call('SREM', KEYS[2], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[3], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 5))
local pending = intent('g', ARGV[1], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[4], now_ms(), pending)
return {1, pending}
