-- enqueue.lua: store new tasks as pending, ready now or delayed; idempotent on id.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5: count n, then n groups of 5: id, data (static JSON), priority, delay (ms),
--         max_attempts.
-- Returns: one integer per task, 1 when stored, 0 when a task with that id existed.

local now = now_ms()
local n = tonumber(ARGV[5])
local out = {}
for i = 0, n - 1 do
  local base = 6 + i * 5
  local id, data = ARGV[base], ARGV[base + 1]
  local priority, delay = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local key = PREFIX .. id
  if redis.call('EXISTS', key) == 1 then
    out[#out + 1] = 0
  else
    local seq = redis.call('INCR', K_SEQ) % 4294967296
    local score = priority * 4294967296 + seq
    local due = now + math.max(0, delay)
    redis.call('HSET', key, 'id', id, 'data', data, 'status', 'pending', 'attempts', 0,
      'max_attempts', ARGV[base + 4], 'token', 0, 'score', score, 'due', due,
      'progress', 0)
    schedule(id, score, due, now)
    out[#out + 1] = 1
  end
end
return out
