-- cancel.lua: cancel a task. Mode "request": a pending task is cancelled at once, a
-- processing one is flagged for its holder. Mode "ack": the holder reports that it
-- stopped a flagged task.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 id, 6 mode ("request" or "ack"), 7 token ('' = none), 8 reason ('' = none).
-- Returns for "request": 1 cancelled or flagged, 0 already final, -1 no such task.
--         for "ack": as complete.lua.

local id, mode, token, reason = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local key = PREFIX .. id
local now = now_ms()
if mode == 'ack' then
  local h, reply = check_holder(key, token, 'cancelled')
  if not h then
    return reply
  end
  if reason ~= '' and not redis.call('HGET', key, 'reason') then
    redis.call('HSET', key, 'reason', reason)
  end
  finish(id, 'cancelled', now, {}, holder_set(h[1]))
  flush(now)
  return 1
end
local h = read(key, 'status')
if not h then
  return -1
end
local status = h[1]
if status ~= 'pending' and status ~= 'processing' then
  return 0
end
if reason ~= '' then
  redis.call('HSET', key, 'reason', reason)
end
if status == 'pending' then
  fence(key)
  finish(id, 'cancelled', now, {}, nil)
  flush(now)
else
  redis.call('HSET', key, 'cancel', 1)
end
return 1
