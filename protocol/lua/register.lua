-- register.lua: registers a new connection and appends its connect event, all or nothing.
-- include: lib/intents.lua
--
-- One slot, the node's shard. A connection with a user is first reserved in the user's set
-- (index.lua, which checks the user's limit there, in the user's slot), after an intent
-- recording that reservation (ZADD, in the same batch as nothing else of it): this script then
-- checks that the intent is still there, writes the connection and removes the intent, since
-- the user's set already holds the connection. A reservation whose intent is gone (settled by
-- a sweep after a very long stall) writes nothing: the caller settles its own and gives up.
--
-- KEYS[1]  {prefix}:{shard}:conn:{connection_id}
-- KEYS[2]  {prefix}:{shard}:node:{node}:conns
-- KEYS[3]  {prefix}:{shard}:inbound
-- KEYS[4]  {prefix}:{shard}:node:{node}:intents
-- ARGV[1]  connection id
-- ARGV[2]  node
-- ARGV[3]  since (ms)
-- ARGV[4]  client address
-- ARGV[5]  user id, '' when anonymous
-- ARGV[6]  the token of the user's reservation ('' when anonymous)
-- ARGV[7..] the connect event's fields and values
--
-- Reply: 1 registered; 0 nothing written: the reservation's intent is gone.
local cid, node, since, addr, user, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if user ~= '' then
  local reservation = intent('u', cid, token, user)
  if not redis.call('ZSCORE', KEYS[4], reservation) then return 0 end
  redis.call('HSET', KEYS[1], 'node', node, 'since', since, 'addr', addr, 'user_id', user)
  redis.call('ZREM', KEYS[4], reservation)
else
  redis.call('HSET', KEYS[1], 'node', node, 'since', since, 'addr', addr)
end
redis.call('SADD', KEYS[2], cid)
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 7))
return 1
