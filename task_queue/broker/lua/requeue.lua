-- requeue.lua: run a final task again from its first attempt. A task with parents waits
-- again for those that have not completed (parents that no longer exist count as done).
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 id, 6 delay (ms).
-- Returns: the task's HGETALL reply, or -1 no such task, -2 not final, or
--          {-3, parent id, parent status} when a parent failed or was cancelled (the
--          parent must run again first; nothing changed).

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
local open = {}
for _, parent in ipairs(parent_ids(key)) do
  local pkey = PREFIX .. parent
  local p = read(pkey, 'status')
  if p and not expired(pkey, now) then
    if p[1] == 'failed' or p[1] == 'cancelled' then
      return {-3, parent, p[1]}
    elseif p[1] ~= 'completed' then
      open[#open + 1] = parent
    end
  end
end
settle_release(id, h[1], now)  -- children of its last run move on first
redis.call('ZREM', K_COMPLETED, id)
redis.call('ZREM', K_FAILED, id)
redis.call('ZREM', K_CANCELLED, id)
redis.call('HDEL', key, 'result', 'error', 'worker', 'started', 'finished', 'cancel',
  'reason', 'lost', 'deps')
local due = now + delay
redis.call('HSET', key, 'status', 'pending', 'attempts', 0, 'progress', 0, 'due', due)
fence(key)
if #open > 0 then
  wait_for_parents(id, open, now)
else
  schedule(id, h[2], due, now)
end
flush(now)  -- what settle_release changed
return redis.call('HGETALL', key)
