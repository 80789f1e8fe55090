-- renew.lua: extend the leases of one holder in one call.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 lease length (ms), then pairs: id, token.
-- Returns: one integer per pair: 1 renewed, 2 renewed and a cancel was requested,
--          0 lost (not this holder's any more).

local deadline = now_ms() + tonumber(ARGV[5])
local out, deadlines = {}, {}
for i = 6, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local h = read(PREFIX .. id, 'status', 'token', 'cancel')
  local reply = 0
  if h and h[1] == 'processing' and h[2] == token then
    deadlines[#deadlines + 1] = deadline
    deadlines[#deadlines + 1] = id
    reply = 1
    if h[3] == '1' then
      reply = 2
    end
  end
  out[#out + 1] = reply
end
zadd_all(K_INFLIGHT, deadlines)
return out
