-- lib/ensure_stream.lua: ensure_stream(key) creates the stream `key`, empty, unless it exists.
-- A helper, not a script: included by the scripts whose header says `-- include: lib/ensure_stream.lua`.
-- Writers append to node streams with NOMKSTREAM, so a live gateway's stream must exist.
local function ensure_stream(key)
  if redis.call('EXISTS', key) == 0 then
    redis.call('XADD', key, '0-1', 'created', '1')
    redis.call('XDEL', key, '0-1')
  end
end
