-- lib/now_ms.lua: now_ms(), the Redis server's clock in milliseconds since the epoch.
-- A helper, not a script: included by the scripts whose header says `-- include: lib/now_ms.lua`.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
