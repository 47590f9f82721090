-- settle.lua: reads whether each intent's membership holds, and removes the intents whose
-- index was made to agree (wsq_protocol.membership).
-- include: lib/intents.lua
--
-- One slot, the node's shard. For each intent the caller passes what it wrote to the index
-- ('1': the connection is in the set, '0': it is not) or '?' (nothing yet: just read). The
-- membership holds when the connection's hash names that user ('u'), or its groups hold that
-- group ('g'). An intent is removed when what the caller wrote is what holds now: the index
-- agrees. Otherwise the caller writes the index again with what this answers, and settles
-- again, until they agree.
--
-- KEYS[1]  {prefix}:{shard}:node:{node}:intents
-- KEYS[2i], KEYS[2i+1]  for the i-th intent (from 1): {prefix}:{shard}:conn:{connection_id}
--          and {prefix}:{shard}:conn:{connection_id}:groups
-- ARGV[2i-1], ARGV[2i]  the i-th intent and '1', '0' or '?'
--
-- Reply: for each intent, 1 or 0 (whether the membership holds now), in order.
local reply = {}
for i = 1, #ARGV / 2 do
  local member, written = ARGV[2 * i - 1], ARGV[2 * i]
  local kind, _, _, name = parse_intent(member)
  local holds = 0
  if kind == 'u' then
    if redis.call('HGET', KEYS[2 * i], 'user_id') == name then holds = 1 end
  elseif kind == 'g' then
    holds = redis.call('SISMEMBER', KEYS[2 * i + 1], name)
  end
  if written == tostring(holds) then redis.call('ZREM', KEYS[1], member) end
  reply[i] = holds
end
return reply
