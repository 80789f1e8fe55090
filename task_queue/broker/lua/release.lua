-- release.lua: the holder hands a leased task back: ready again at once and the attempt
-- not counted (cancelled instead when a cancel was requested meanwhile).
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 id, 6 token.
-- Returns: 1 handed back, 0 refused (stale token, or not processing). The token is
-- bumped so the old holder's later reports are refused.

local id, token = ARGV[5], ARGV[6]
local key = PREFIX .. id
if not is_task(key) then
  return 0
end
local h = redis.call('HMGET', key, 'status', 'token', 'cancel', 'score')
if h[2] ~= token or h[1] ~= 'processing' then
  return 0
end
local now = now_ms()
redis.call('HINCRBY', key, 'attempts', -1)
if h[3] == '1' then
  finish_cancelled(id, now)
  return 1
end
redis.call('ZREM', K_INFLIGHT, id)
redis.call('HSET', key, 'status', 'pending')
redis.call('HINCRBY', key, 'token', 1)
redis.call('HDEL', key, 'worker')
schedule(id, h[4], now, now)
return 1
