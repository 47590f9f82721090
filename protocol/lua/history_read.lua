-- history_read.lua: reads one page of a group's history, and what the caller needs to tell
-- whether more follow and whether entries it has not seen were trimmed (wsq_protocol.history).
--
-- KEYS[1]  {prefix:group:<group>}:history
-- ARGV[1]  since: the offset (entry id) of the last entry the caller has, or '' for the newest
-- ARGV[2]  limit, the most entries to return
--
-- Reply: {entries, more, oldest}. With since: the entries after it, oldest first (XRANGE); else
-- the newest ones, newest first (XREVRANGE). more is 1 when entries beyond the page exist (newer
-- ones with since, older ones without), else 0; oldest is the id of the oldest entry kept, or ''
-- (an empty or expired history).
local limit = tonumber(ARGV[2])
local entries
if ARGV[1] == '' then
  entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', limit + 1)
else
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', limit + 1)
end
local more = 0
if #entries > limit then
  entries[#entries] = nil
  more = 1
end
local oldest = ''
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first > 0 then
  oldest = first[1][1]
end
return {entries, more, oldest}
