-- history_append.lua: appends one push to a group's history (a stream in the group's slot),
-- keeps at most the last N entries and none older than T, and makes the stream expire T after
-- this last append (wsq_protocol.history).
--
-- KEYS[1]  {prefix:group:<group>}:history
-- ARGV[1]  N, the most entries kept (exact MAXLEN: it trims one entry per append)
-- ARGV[2]  T in milliseconds: entries older than T are trimmed (XTRIM MINID), and the stream
--          expires T after its last append (PEXPIRE)
-- ARGV[3]  the push's action
-- ARGV[4]  the push's data, as JSON text
--
-- Reply: the new entry's id (its offset in the history).
-- include: lib/now_ms.lua
local now = now_ms()
local ttl = tonumber(ARGV[2])
local id = redis.call(
  'XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'action', ARGV[3], 'data', ARGV[4], 'ts', string.format('%d', now)
)
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', now - ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
return id
