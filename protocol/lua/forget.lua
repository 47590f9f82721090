-- forget.lua: forgets a connection (a socket closed) and appends its one disconnect event.
-- include: lib/now_ms.lua
-- include: lib/intents.lua
-- include: lib/forget.lua
--
-- Atomic, and only while the connection is registered: however often it runs for a connection,
-- one disconnect event is written. One slot: the connection's user and groups sets are left to
-- the caller, which removes the connection from them after (the intents this records).
--
-- KEYS[1]  {prefix}:{shard}:conn:{connection_id}
-- KEYS[2]  {prefix}:{shard}:conn:{connection_id}:groups
-- KEYS[3]  {prefix}:{shard}:node:{node}:conns
-- KEYS[4]  {prefix}:{shard}:inbound
-- KEYS[5]  {prefix}:{shard}:node:{node}:intents
-- ARGV[1]  close code of the disconnect event
-- ARGV[2]  connection id
-- ARGV[3]  token of the intents it records
--
-- Reply: {1, intent...} forgotten (event written; the intents of its user and groups, to
-- settle); 0 not registered (already forgotten: nothing written).
local info = read_connection(1)
if not info then return 0 end
return remove(1, ARGV[2], ARGV[3], info, ARGV[1], now_ms())
