-- forget.lua: forgets a connection (a socket closed) and appends its one disconnect event.
-- include: lib/now_ms.lua
-- include: lib/forget.lua
--
-- Atomic, and only while the connection is registered: however often it runs for a connection,
-- one disconnect event is written. It first checks that the caller passed the connection's
-- true node, user and groups (their keys are needed in KEYS); if not, it writes nothing and
-- answers what it found, and the caller calls again with those.
--
-- KEYS[1]  {prefix}:conn:{connection_id}
-- KEYS[2]  {prefix}:conn:{connection_id}:groups
-- KEYS[3]  {prefix}:node:{node}:conns
-- KEYS[4]  {prefix}:inbound
-- KEYS[5]  {prefix}:user:{user_id}:conns     (only when ARGV[4] is not '')
-- KEYS[..] {prefix}:group:{group}:conns      (one per group of ARGV[5...], in that order)
-- ARGV[1]  close code of the disconnect event
-- ARGV[2]  connection id
-- ARGV[3]  node
-- ARGV[4]  user id, '' when anonymous
-- ARGV[5..] the connection's groups (any order)
--
-- Reply: 1 forgotten (event written); 0 not registered (already forgotten: nothing written);
-- or {'stale', node, user id or '', group...}: the connection is registered with these, not
-- with what ARGV says; nothing was written: call again with them (and their keys).
local info = read_connection(1)
if not info then return 0 end
if not as_given(info, 2) then return stale(info) end
remove(1, 2, info, ARGV[1], tostring(now_ms()))
return 1
