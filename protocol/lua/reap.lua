-- reap.lua: forgets one connection of a dead gateway, with its disconnect event (close code 1006).
-- include: lib/now_ms.lua
-- include: lib/forget.lua
--
-- Run by a surviving gateway for each id of {prefix}:node:{node}:conns (read with SRANDMEMBER),
-- after reading the connection's hash and groups. Only while the node's heartbeat is older than
-- the timeout (unless forced: a gateway starting with the node id of its previous incarnation).
-- An id whose hash is gone, or names another node, just leaves the node's set.
--
-- KEYS[1]  {prefix}:nodes
-- KEYS[2]  {prefix}:node:{node}:reaped        (set, EX 3600, when not forced)
-- KEYS[3..] as forget.lua's KEYS[1..]:
-- KEYS[3]  {prefix}:conn:{connection_id}
-- KEYS[4]  {prefix}:conn:{connection_id}:groups
-- KEYS[5]  {prefix}:node:{node}:conns
-- KEYS[6]  {prefix}:inbound
-- KEYS[7]  {prefix}:user:{user_id}:conns     (only when ARGV[5] is not '')
-- KEYS[..] {prefix}:group:{group}:conns      (one per group of ARGV[6...], in that order)
-- ARGV[1]  heartbeat timeout (ms)
-- ARGV[2]  '1' to reap even a node whose heartbeat is fresh, else '0'
-- ARGV[3]  connection id
-- ARGV[4]  node (the dead gateway)
-- ARGV[5]  user id, '' when anonymous
-- ARGV[6..] the connection's groups
--
-- Reply: 1 forgotten; 0 not registered on that node (the id left the node's set); -1 the node's
-- heartbeat is fresh, or the node is not in {prefix}:nodes (nothing written: stop reaping it);
-- or {'stale', node, user id or '', group...} as forget.lua (nothing written: call again).
local REAPED_TTL_S = 3600  -- keys.json expire_s.node_reaped (a test checks)
local now = now_ms()
local forced = ARGV[2] == '1'
if not forced then
  local seen = redis.call('ZSCORE', KEYS[1], ARGV[4])
  if not seen or tonumber(seen) > now - tonumber(ARGV[1]) then return -1 end
end
local info = read_connection(3)
local reply
if not info or info.node ~= ARGV[4] then
  if redis.call('SREM', KEYS[5], ARGV[3]) == 0 then return 0 end
  reply = 0
elseif not as_given(info, 3) then
  return stale(info)
else
  remove(3, 3, info, '1006', tostring(now))
  reply = 1
end
if not forced then redis.call('SET', KEYS[2], '1', 'EX', REAPED_TTL_S) end
return reply
