-- replay.lua: moves one dead letter back into the inbound stream (exactly once).
--
-- The event's fields, without those the dead letter added and without `attempt` (it starts
-- again at 1).
--
-- KEYS[1]  {prefix}:{shard}:dead
-- KEYS[2]  {prefix}:{shard}:inbound
-- ARGV[1]  the dead letter's entry id
-- ARGV[2..] the names of the fields to drop (error, attempts, failed_at, worker, attempt)
--
-- Reply: 1 replayed; 0 no such entry (already replayed, or never was).
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then
  return 0
end
local drop = {}
for i = 2, #ARGV do
  drop[ARGV[i]] = true
end
local fields = entries[1][2]
local command = {'XADD', KEYS[2], '*'}
for i = 1, #fields, 2 do
  if not drop[fields[i]] then
    command[#command + 1] = fields[i]
    command[#command + 1] = fields[i + 1]
  end
end
redis.call(unpack(command))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
