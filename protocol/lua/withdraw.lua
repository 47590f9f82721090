-- withdraw.lua: takes back client frames no worker has read yet (WSQ_TAKE_TIMEOUT_S).
--
-- A gateway calls it for the frames with an id it queued longer ago than the deadline. An entry
-- is withdrawn (XDEL) only while no worker has read it: its id is above the consumer group's
-- last-delivered-id (or the group does not exist yet). Atomic with respect to the workers'
-- XREADGROUP, so each frame is either read by a worker (which answers it) or withdrawn (and
-- the gateway answers it with $error not_taken): never both, never neither.
--
-- An id above last-delivered-id is named whether or not this call deleted it: a call sent again
-- after its reply was lost names the same ids, and an entry Redis lost (restarted empty, or the
-- stream gone) was not taken either.
--
-- KEYS[1]  {prefix}:{shard}:inbound (the gateway's partition of the inbound stream)
-- ARGV[1]  the workers' consumer group
-- ARGV[2..] the entry ids to withdraw
--
-- Reply: the ids withdrawn (a subset of ARGV[2..]), in ARGV's order.
local function parse(id)
    local ms, seq = string.match(id, "^(%d+)-(%d+)$")
    return tonumber(ms), tonumber(seq)
end

local delivered_ms, delivered_seq = -1, -1
if redis.call("EXISTS", KEYS[1]) == 1 then
    for _, group in ipairs(redis.call("XINFO", "GROUPS", KEYS[1])) do
        local fields = {}
        for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
        if fields["name"] == ARGV[1] then
            delivered_ms, delivered_seq = parse(fields["last-delivered-id"])
        end
    end
end

local withdrawn = {}
for i = 2, #ARGV do
    local ms, seq = parse(ARGV[i])
    if ms ~= nil and (ms > delivered_ms or (ms == delivered_ms and seq > delivered_seq)) then
        redis.call("XDEL", KEYS[1], ARGV[i])
        withdrawn[#withdrawn + 1] = ARGV[i]
    end
end
return withdrawn
