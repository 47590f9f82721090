-- claim.lua: claims entries of the consumer group idle for at least a given time (XAUTOCLAIM),
-- and reads how often each was delivered (XAUTOCLAIM counts this delivery too).
--
-- KEYS[1]  {prefix}:{shard}:inbound
-- ARGV[1]  consumer group (workers)
-- ARGV[2]  consumer
-- ARGV[3]  min idle (ms)
-- ARGV[4]  cursor (an entry id, 0-0 to start)
-- ARGV[5]  count
--
-- Reply: {next cursor, entries, delivery counts} (an entry deleted while pending is nil on
-- Redis 6.2, its count 0).
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  counts[i] = 0
  if entry then  -- Redis 6.2 answers nil for an entry deleted while pending
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    counts[i] = pending[1] and pending[1][4] or 1
  end
end
return {claimed[1], claimed[2], counts}
