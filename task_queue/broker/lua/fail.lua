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
if token ~= '' then
  local seen = read(key, 'status', 'token')
  if seen and seen[1] == 'pending' and seen[2] == token then
    return 1  -- this holder's retry was recorded already
  end
end
local h, reply = check_holder(key, token, 'failed', 'attempts', 'max_attempts', 'cancel',
  'score', 'deps')
if not h then
  return reply
end
local from = holder_set(h[1])
if (tonumber(h[7]) or 0) > 0 then
  -- an administrative call on a task still waiting for its parents: a retry keeps it
  -- waiting, with the error recorded; otherwise it fails (and cancels its own children)
  if retry ~= '' then
    redis.call('HSET', key, 'error', err)
  else
    finish(id, 'failed', now, {'error', err}, K_WAITING)
  end
elseif h[5] == '1' then
  finish(id, 'cancelled', now, {}, from)
elseif retry ~= '' and (tonumber(h[3]) or 0) < (tonumber(h[4]) or 0) and tonumber(h[6]) then
  -- (a record whose max_attempts or score is not a number cannot be retried: failed)
  local due = now + tonumber(retry)
  redis.call('ZREM', K_INFLIGHT, id)
  redis.call('ZREM', K_READY, id)    -- an administrative retry of a pending task:
  redis.call('ZREM', K_DELAYED, id)  -- it must leave the set it is queued in
  redis.call('HSET', key, 'status', 'pending', 'error', err, 'due', due, 'worker', '')
  schedule(id, h[6], due, now)
else
  finish(id, 'failed', now, {'error', err}, from)
end
flush(now)
return 1
