-- requeue.lua: run a final task again from its first attempt.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 id, 6 delay (ms).
-- Returns: the task's HGETALL reply, or -1 no such task, -2 not final.

local id, delay = ARGV[5], tonumber(ARGV[6])
local key = PREFIX .. id
local now = now_ms()
local h = read(key, 'status', 'score')
if not h or expired(key, now) then
  return -1
end
if h[1] ~= 'completed' and h[1] ~= 'failed' and h[1] ~= 'cancelled' then
  return -2
end
redis.call('ZREM', K_COMPLETED, id)
redis.call('ZREM', K_FAILED, id)
redis.call('ZREM', K_CANCELLED, id)
redis.call('HDEL', key, 'result', 'error', 'worker', 'started', 'finished', 'cancel',
  'reason', 'lost', 'deps')
local due = now + delay
redis.call('HSET', key, 'status', 'pending', 'attempts', 0, 'progress', 0, 'due', due)
fence(key)
schedule(id, h[2], due, now)
return redis.call('HGETALL', key)
