-- lib/forget.lua: removing one connection from the registry, shared by forget.lua and reap.lua.
-- A helper, not a script: included by the scripts whose header says `-- include: lib/forget.lua`.
--
-- The keys of one connection, from KEYS[k] on (built by the caller, never here):
--   KEYS[k]     {prefix}:conn:{connection_id}           (hash)
--   KEYS[k+1]   {prefix}:conn:{connection_id}:groups    (set)
--   KEYS[k+2]   {prefix}:node:{node}:conns              (set)
--   KEYS[k+3]   {prefix}:inbound                        (stream: the disconnect event)
--   KEYS[k+4]   {prefix}:user:{user_id}:conns           (set; only when ARGV[a+2] is not '')
--   then        {prefix}:group:{group}:conns            (set; one per group of ARGV[a+3...], in order)
-- and what the caller believes of it, from ARGV[a] on:
--   ARGV[a]     connection id
--   ARGV[a+1]   node (the gateway holding it)
--   ARGV[a+2]   user id, '' when anonymous
--   ARGV[a+3..] its groups
-- The script checks that belief against the hash and the groups set before it writes anything.

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

-- Whether `info` is what the caller passed (same node, same user, same set of groups).
local function as_given(info, a)
  if info.node ~= ARGV[a + 1] or (info.user_id or '') ~= ARGV[a + 2] then return false end
  if #info.groups ~= #ARGV - a - 2 then return false end
  local given = {}
  for i = a + 3, #ARGV do given[ARGV[i]] = true end
  for _, group in ipairs(info.groups) do
    if not given[group] then return false end
  end
  return true
end

-- The reply when the caller's belief was wrong: nothing was written; call again with these.
local function stale(info)
  local found = {'stale', info.node or '', info.user_id or ''}
  for _, group in ipairs(info.groups) do found[#found + 1] = group end
  return found
end

-- Removes the connection `info` (read by read_connection, checked by as_given) and appends its
-- disconnect event with close code `code` and timestamp `ts` (ms, a string).
local function remove(k, a, info, code, ts)
  local cid = ARGV[a]
  redis.call('DEL', KEYS[k], KEYS[k + 1])
  redis.call('SREM', KEYS[k + 2], cid)
  local g = k + 4
  if info.user_id then
    redis.call('SREM', KEYS[k + 4], cid)
    g = k + 5
  end
  for i = 0, #ARGV - a - 3 do redis.call('SREM', KEYS[g + i], cid) end
  local event = {'v', VERSION, 'type', 'disconnect', 'connection_id', cid, 'node', info.node,
                 'ts', ts, 'addr', info.addr or '', 'close_code', code}
  if info.user_id then
    event[#event + 1] = 'user_id'
    event[#event + 1] = info.user_id
  end
  redis.call('XADD', KEYS[k + 3], '*', unpack(event))
end
