-- lib/forget.lua: removing one connection from the registry, shared by forget.lua and reap.lua.
-- A helper, not a script: included by the scripts whose header says `-- include: lib/forget.lua`
-- (after lib/intents.lua and lib/now_ms.lua).
--
-- The keys of one connection, from KEYS[k] on (built by the caller, never here), all in the
-- shard of the connection's node:
--   KEYS[k]     {prefix}:{shard}:conn:{connection_id}           (hash)
--   KEYS[k+1]   {prefix}:{shard}:conn:{connection_id}:groups    (set)
--   KEYS[k+2]   {prefix}:{shard}:node:{node}:conns              (set)
--   KEYS[k+3]   {prefix}:{shard}:inbound                        (stream: the disconnect event)
--   KEYS[k+4]   {prefix}:{shard}:node:{node}:intents            (sorted set: the index changes)

local VERSION = '1'  -- the event version (wsq_protocol.codes.PROTOCOL_VERSION; a test checks)

-- The connection's hash as a table, with `groups` (a list): nil when it is not registered.
local function read_connection(k)
  local flat = redis.call('HGETALL', KEYS[k])
  if #flat == 0 then return nil end
  local info = {}
  for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
  info.groups = redis.call('SMEMBERS', KEYS[k + 1])
  return info
end

-- Deletes the connection, appends its disconnect event, and records the index removals (its
-- user's set, each group's set) as intents. Returns {1, intent...}.
local function remove(k, cid, token, info, code, now)
  redis.call('DEL', KEYS[k], KEYS[k + 1])
  redis.call('SREM', KEYS[k + 2], cid)
  local event = {'v', VERSION, 'type', 'disconnect', 'connection_id', cid, 'node', info.node,
                 'ts', tostring(now), 'addr', info.addr or '', 'close_code', code}
  local reply = {1}
  if info.user_id then
    event[#event + 1] = 'user_id'
    event[#event + 1] = info.user_id
    reply[#reply + 1] = intent('u', cid, token, info.user_id)
  end
  redis.call('XADD', KEYS[k + 3], '*', unpack(event))
  for _, group in ipairs(info.groups) do reply[#reply + 1] = intent('g', cid, token, group) end
  for i = 2, #reply do redis.call('ZADD', KEYS[k + 4], now, reply[i]) end
  return reply
end
