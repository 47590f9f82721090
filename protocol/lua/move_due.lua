-- move_due.lua: moves due members of the delayed set into the inbound stream (each once).
--
-- A member that is not {"fields": {name: string, ...}} is removed and returned, so it can't
-- block the others.
--
-- KEYS[1]  {prefix}:{shard}:delayed
-- KEYS[2]  {prefix}:{shard}:inbound
-- ARGV[1]  the most members to move
--
-- Reply: {members moved, malformed members}.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
local moved, malformed = 0, {}
for _, member in ipairs(due) do
  local ok, entry = pcall(cjson.decode, member)
  local command = {'XADD', KEYS[2], '*'}
  if ok and type(entry) == 'table' and type(entry.fields) == 'table' then
    for name, value in pairs(entry.fields) do
      if type(name) ~= 'string' or type(value) ~= 'string' then
        ok = false
      end
      command[#command + 1] = name
      command[#command + 1] = value
    end
  else
    ok = false
  end
  if ok and #command > 3 then
    redis.call(unpack(command))
    moved = moved + 1
  else
    malformed[#malformed + 1] = member
  end
  redis.call('ZREM', KEYS[1], member)
end
return {moved, malformed}
