-- fail.lua: record a failed attempt: pending again after a delay while attempts are
-- left and a retry was asked for, else failed for good (a dead letter).
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 id, 6 token ('' = administrative), 7 error (JSON), 8 retry delay in ms, or ''
--      for no retry.
-- Returns: 1 recorded (or already was), 0 refused (stale holder), -1 no such task,
--          -2 already final otherwise.

local id, token, err, retry = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local key = PREFIX .. id
local now = now_ms()
if token ~= '' and is_task(key) then
  local h = redis.call('HMGET', key, 'status', 'token')
  if h[1] == 'pending' and h[2] == token then
    return 1  -- this holder's retry was recorded already
  end
end
local status, reply = check_holder(key, token, 'failed')
if not status then
  return reply
end
local h = redis.call('HMGET', key, 'attempts', 'max_attempts', 'cancel', 'score')
if h[3] == '1' then
  finish_cancelled(id, now)
elseif retry ~= '' and tonumber(h[1]) < tonumber(h[2]) then
  local due = now + tonumber(retry)
  redis.call('ZREM', K_INFLIGHT, id)
  redis.call('HSET', key, 'status', 'pending', 'error', err, 'due', due)
  redis.call('HDEL', key, 'worker')
  schedule(id, h[4], due, now)
else
  finish(id, 'failed', now, {'error', err})
end
return 1
