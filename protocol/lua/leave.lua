-- leave.lua: removes a connection from a group and tells its gateway.
--
-- KEYS[1]  {prefix}:conn:{connection_id}     (unused: the same KEYS as join.lua)
-- KEYS[2]  {prefix}:group:{group}:conns
-- KEYS[3]  {prefix}:conn:{connection_id}:groups
-- KEYS[4]  {prefix}:node:{node}:out          (the node of the connection id)
-- ARGV[1]  connection id
-- ARGV[2]  group
-- ARGV[3]  MAXLEN ~ cap of node streams (100000)
-- ARGV[4..] the leave command's fields and values
--
-- Reply: 1 it was a member (command appended, NOMKSTREAM); 0 it was not (nothing written).
local was_member = redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
if was_member == 0 then
  return 0
end
redis.call('XADD', KEYS[4], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return 1
