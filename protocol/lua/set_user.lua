-- set_user.lua: gives a registered connection the user id its connect hook named.
--
-- KEYS[1]  {prefix}:conn:{connection_id}
-- KEYS[2]  {prefix}:user:{user_id}:conns     (the new user's)
-- KEYS[3]  {prefix}:user:{previous}:conns    (only when ARGV[3] is not '')
-- ARGV[1]  connection id
-- ARGV[2]  user id
-- ARGV[3]  the previous user id, '' when none
-- ARGV[4]  the most connections one user may hold (0: no limit)
--
-- Reply: 1 recorded (or the connection is gone, reaped meanwhile: left forgotten); 0 nothing
-- written: the user already holds that many connections.
local cid, user, previous, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if limit > 0 and redis.call('SISMEMBER', KEYS[2], cid) == 0 and redis.call('SCARD', KEYS[2]) >= limit then
  return 0
end
redis.call('HSET', KEYS[1], 'user_id', user)
redis.call('SADD', KEYS[2], cid)
if previous ~= '' then redis.call('SREM', KEYS[3], cid) end
return 1
