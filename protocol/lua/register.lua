-- register.lua: registers a new connection and appends its connect event, all or nothing.
--
-- The user's limit is checked in the same step: a burst of connections from one user, on any
-- number of gateways, cannot pass it.
--
-- KEYS[1]  {prefix}:conn:{connection_id}
-- KEYS[2]  {prefix}:node:{node}:conns
-- KEYS[3]  {prefix}:inbound
-- KEYS[4]  {prefix}:user:{user_id}:conns     (only when ARGV[5] is not '')
-- ARGV[1]  connection id
-- ARGV[2]  node
-- ARGV[3]  since (ms)
-- ARGV[4]  client address
-- ARGV[5]  user id, '' when anonymous
-- ARGV[6]  the most connections one user may hold (0: no limit)
-- ARGV[7..] the connect event's fields and values
--
-- Reply: 1 registered; 0 nothing written: the user already holds that many connections.
local cid, node, since, addr, user, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
if user ~= '' then
  if limit > 0 and redis.call('SCARD', KEYS[4]) >= limit then return 0 end
  redis.call('HSET', KEYS[1], 'node', node, 'since', since, 'addr', addr, 'user_id', user)
  redis.call('SADD', KEYS[4], cid)
else
  redis.call('HSET', KEYS[1], 'node', node, 'since', since, 'addr', addr)
end
redis.call('SADD', KEYS[2], cid)
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 7))
return 1
