-- renew.lua: extend the leases of one holder in one call.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 lease length (ms), then pairs: id, token.
-- Returns: one integer per pair: 1 renewed, 2 renewed and a cancel was requested,
--          0 lost (not this holder's any more).

local lease_ms = tonumber(ARGV[5])
local deadline = now_ms() + lease_ms
local out = {}
for i = 6, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = PREFIX .. id
  local reply = 0
  if is_task(key) then
    local h = redis.call('HMGET', key, 'status', 'token', 'cancel')
    if h[1] == 'processing' and h[2] == token then
      redis.call('ZADD', K_INFLIGHT, deadline, id)
      reply = 1
      if h[3] == '1' then
        reply = 2
      end
    end
  end
  out[#out + 1] = reply
end
return out
