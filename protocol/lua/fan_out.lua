-- fan_out.lua: appends one command to the node stream of every gateway holding a member of a
-- set of connection ids (a user's or a group's): to_user() and to_group().
--
-- The caller passes the node streams it believes the members are on (a connection id is
-- `<node>.<22 characters>`); the script reads the set and, if a member's node is not among
-- them, writes nothing and answers the nodes it found: call again with those. Passing more
-- nodes than needed is fine (only nodes holding a member are written to). Every XADD is
-- NOMKSTREAM: a live gateway's stream exists, a dead one's must not be created again.
--
-- KEYS[1]  the set: {prefix}:user:{user_id}:conns or {prefix}:group:{group}:conns
-- KEYS[2..] {prefix}:node:{node}:out, one per node of ARGV[2], in that order
-- ARGV[1]  the number of node streams in KEYS (#KEYS - 1)
-- ARGV[2]  those nodes' ids, separated by single spaces ('' for none)
-- ARGV[3]  MAXLEN ~ cap of node streams (100000)
-- ARGV[4..] the command's fields and values
--
-- Reply: the number of gateways written to (an integer); or {node...}, a list of the nodes of
-- the set's members (never empty): one was missing from KEYS, nothing was written.
local stream_of, i = {}, 1
for node in string.gmatch(ARGV[2], '[^ ]+') do
  i = i + 1
  stream_of[node] = KEYS[i]
end
if i - 1 ~= tonumber(ARGV[1]) or i ~= #KEYS then
  return redis.error_reply('fan_out: ARGV[2] must name one node per node stream of KEYS')
end
local seen, nodes, missing = {}, {}, false
for _, connection_id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  -- A node already seen is recognised without a pattern match: the id's text before its
  -- 22-character suffix (most members share a few nodes; a big group spends its time here).
  local known = string.byte(connection_id, -23) == 46 and seen[string.sub(connection_id, 1, -24)]
  if not known then
    local node = string.match(connection_id, '^([%w_%-]+)%.[%w_%-]+$')
    if node and not seen[node] then
      seen[node] = true
      nodes[#nodes + 1] = node
      if not stream_of[node] then missing = true end
    end
  end
end
if missing then return nodes end
local reached = 0
for _, node in ipairs(nodes) do
  if redis.call('XADD', stream_of[node], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4)) then
    reached = reached + 1
  end
end
return reached
