-- drop_stale_consumers.lua: removes the consumers of dead workers from the group.
--
-- Those idle (no read, claim or keep-alive: XINFO CONSUMERS' `idle`) for longer than a live
-- worker ever is, and holding no pending entry: XGROUP DELCONSUMER drops a consumer's pending
-- entries, so one that holds any stays until they were claimed (then run again) by a live worker.
--
-- KEYS[1]  {prefix}:{shard}:inbound
-- ARGV[1]  consumer group (workers)
-- ARGV[2]  min idle (ms)
-- ARGV[3]  the caller's consumer (never removed)
--
-- Reply: {name, idle, name, idle, ...} of the consumers removed.
local removed, min_idle = {}, tonumber(ARGV[2])
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do
    fields[consumer[i]] = consumer[i + 1]
  end
  if fields.pending == 0 and fields.idle > min_idle and fields.name ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields.name)
    removed[#removed + 1] = fields.name
    removed[#removed + 1] = fields.idle
  end
end
return removed
