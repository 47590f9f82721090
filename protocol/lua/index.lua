-- index.lua: adds a connection to, or removes it from, a user's or a group's set (an index),
-- keeping the count of members per gateway node that to_user() and to_group() read.
--
-- One slot, the index's: {prefix}:user:{user_id} or {prefix}:group:{group} in braces.
--
-- KEYS[1]  the set: {{prefix}:user:{user_id}}:conns or {{prefix}:group:{group}}:conns
-- KEYS[2]  its nodes: {{prefix}:user:{user_id}}:nodes or {{prefix}:group:{group}}:nodes
--          (hash: node -> number of members on that node)
-- ARGV[1]  '+' to add, '-' to remove
-- ARGV[2]  connection id
-- ARGV[3]  its node
-- ARGV[4]  for '+': the most members the set may hold (0: no limit)
--
-- Reply: 1 added or removed; 0 nothing to do (a member already, or not one); -1 ('+' only)
-- nothing written: the set already holds that many members.
local cid, node = ARGV[2], ARGV[3]
if ARGV[1] == '+' then
  if redis.call('SISMEMBER', KEYS[1], cid) == 1 then return 0 end
  local limit = tonumber(ARGV[4])
  if limit > 0 and redis.call('SCARD', KEYS[1]) >= limit then return -1 end
  redis.call('SADD', KEYS[1], cid)
  redis.call('HINCRBY', KEYS[2], node, 1)
  return 1
end
if redis.call('SREM', KEYS[1], cid) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], node, -1) <= 0 then redis.call('HDEL', KEYS[2], node) end
return 1
