-- join.lua: adds a connection to a group and tells its gateway.
--
-- Atomic with the gateway's clean-up of a connection (forget.lua), so a join never outlives
-- its connection.
--
-- KEYS[1]  {prefix}:conn:{connection_id}
-- KEYS[2]  {prefix}:group:{group}:conns
-- KEYS[3]  {prefix}:conn:{connection_id}:groups
-- KEYS[4]  {prefix}:node:{node}:out          (the node of the connection id)
-- ARGV[1]  connection id
-- ARGV[2]  group
-- ARGV[3]  MAXLEN ~ cap of node streams (100000)
-- ARGV[4..] the join command's fields and values
--
-- Reply: 1 joined (command appended, NOMKSTREAM); 0 the connection is not registered
-- (gone, or never was): nothing written.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('XADD', KEYS[4], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return 1
