-- lib/intents.lua: index intents, shared by the scripts that change what a connection is a
-- member of (its user, its groups) in its node's shard.
-- A helper, not a script: included by the scripts whose header says `-- include: lib/intents.lua`.
--
-- A user's and a group's sets (the indexes) live in slots of their own, so no script can change
-- them together with the connection's record. Each script that changes a membership records an
-- intent in {prefix}:node:{node}:intents (sorted set, score: Redis time in ms), and its caller
-- then makes the index agree (wsq_protocol.membership): settle.lua removes an intent once the
-- index says what the record says. An intent is the text
--   '<kind>\n<connection id>\n<token>\n<name>'
-- kind 'u' (name: a user id) or 'g' (name: a group); token: the caller's, so that two flows on
-- the same membership each settle their own. Names have no control characters, so '\n' splits.

local function intent(kind, cid, token, name)
  return kind .. '\n' .. cid .. '\n' .. token .. '\n' .. name
end

local function parse_intent(member)
  local kind, cid, token, name = string.match(member, '^([ug])\n([^\n]+)\n([^\n]*)\n(.+)$')
  return kind, cid, token, name
end
