-- keep_alive.lua: resets the idle time of entries the consumer still owns, without counting a
-- delivery (XCLAIM ... JUSTID), and leaves alone those another worker claimed meanwhile.
--
-- KEYS[1]  {prefix}:{shard}:inbound
-- ARGV[1]  consumer group (workers)
-- ARGV[2]  consumer
-- ARGV[3..] entry ids
--
-- Reply: the ids refreshed.
local mine = {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    mine[#mine + 1] = ARGV[i]
  end
end
if #mine > 0 then
  local command = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], '0'}
  for _, id in ipairs(mine) do
    command[#command + 1] = id
  end
  command[#command + 1] = 'JUSTID'
  redis.call(unpack(command))
end
return mine
