-- publish_schemas.lua: writes a worker's action schemas into the schemas hash, and bumps its
-- $version when a field changed (gateways poll $version and read the hash again when it moved).
--
-- KEYS[1]  {prefix}:schemas
-- ARGV[1]  'start' (write them: the worker that starts last wins) or 'restore' (write them only
--          when the hash is gone: Redis lost its data)
-- ARGV[2]  n, how many schemas follow
-- ARGV[3..2+2n]  action, schema (canonical JSON text) pairs
-- ARGV[3+2n..]   actions whose schema to remove (the worker handles them without one)
--
-- Reply: the $version after the call, or 0 when nothing was written.
if ARGV[1] == 'restore' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local n = tonumber(ARGV[2])
local changed = false
for i = 3, 2 + 2 * n, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    changed = true
  end
end
for i = 3 + 2 * n, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    changed = true
  end
end
if not changed then
  return 0
end
return redis.call('HINCRBY', KEYS[1], '$version', 1)
