-- set_user.lua: gives a registered connection the user id its connect hook named.
-- include: lib/now_ms.lua
-- include: lib/intents.lua
--
-- One slot, the node's shard. As register.lua: the connection was reserved in the new user's
-- set first (an intent, then index.lua); this checks that intent, records the user, removes
-- the intent, and records an intent to remove the connection from the previous user's set.
--
-- KEYS[1]  {prefix}:{shard}:conn:{connection_id}
-- KEYS[2]  {prefix}:{shard}:node:{node}:intents
-- ARGV[1]  connection id
-- ARGV[2]  user id
-- ARGV[3]  the previous user id, '' when none
-- ARGV[4]  the token of the reservation in the new user's set (and of the previous one's removal)
--
-- Reply: 1 recorded, with {1, intent} when a previous user's set is to be left (settle it);
-- 2 the connection is gone (reaped meanwhile: left forgotten, the caller settles its
-- reservation); 0 nothing written: the reservation's intent is gone.
local cid, user, previous, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local reservation = intent('u', cid, token, user)
if not redis.call('ZSCORE', KEYS[2], reservation) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 2 end
redis.call('HSET', KEYS[1], 'user_id', user)
redis.call('ZREM', KEYS[2], reservation)
if previous ~= '' and previous ~= user then
  local leaving = intent('u', cid, token, previous)
  redis.call('ZADD', KEYS[2], now_ms(), leaving)
  return {1, leaving}
end
return 1
