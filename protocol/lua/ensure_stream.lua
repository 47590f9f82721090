-- ensure_stream.lua: creates a gateway's node stream, empty, unless it exists.
-- include: lib/ensure_stream.lua
--
-- Run first on every new Redis connection of a gateway's writer and command reader (Redis may
-- have restarted empty), before any event of that gateway, so before any reply to one.
--
-- KEYS[1]  {prefix}:node:{node}:out
--
-- Reply: nil.
ensure_stream(KEYS[1])
