-- release.lua: the holder hands a leased task back: ready again at once and the attempt
-- not counted (cancelled instead when a cancel was requested meanwhile).
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 onwards: pairs of id, token.
-- Returns: one integer per pair: 1 handed back, 0 refused (stale token, or not
-- processing). The token moves on, so the old holder's later reports are refused.

local now = now_ms()
local out = {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = PREFIX .. id
  local h = read(key, 'status', 'token', 'cancel', 'score')
  local reply = 0
  if h and h[2] == token and h[1] == 'processing' then
    reply = 1
    redis.call('HINCRBY', key, 'attempts', -1)
    fence(key)
    if h[3] == '1' then
      finish(id, 'cancelled', now, {}, K_INFLIGHT)
    else
      redis.call('ZREM', K_INFLIGHT, id)
      redis.call('HSET', key, 'status', 'pending', 'worker', '')
      schedule(id, h[4], now, now)
    end
  end
  out[#out + 1] = reply
end
flush(now)
return out
