-- enqueue.lua: store new tasks as pending: ready now, delayed, or waiting for parents;
-- idempotent on id.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5: count n. ARGV 6: the layout of the rest:
--   'same': ARGV 7-9 priority, delay (ms) and max_attempts, shared by all n tasks, none
--           of which has parents; then n pairs: id, data (static JSON).
--   'each': n groups: id, data, priority, delay (ms), max_attempts, number of parents k,
--           then the k parent ids.
-- Returns: one integer per task, 1 when stored, 2 when stored but cancelled at once (a
--          parent had failed or was cancelled), 0 when a task with that id existed; or
--          {-3, task id, parent id} when a new task names a parent that does not exist
--          (nothing is stored then).

local now = now_ms()
local n = tonumber(ARGV[5])
local same = ARGV[6] == 'same'

-- 'each' only: every parent of a new task exists, or is a new task earlier in this call.
if not same then
  local fresh, known = {}, {}
  local at = 7
  for _ = 1, n do
    local id, k = ARGV[at], tonumber(ARGV[at + 5])
    if k > 0 then
      local key = PREFIX .. id
      if not (redis.call('EXISTS', key) == 1 and not expired(key, now)) then
        for j = 1, k do
          local parent = ARGV[at + 5 + j]
          if not fresh[parent] and not known[parent] then
            local pkey = PREFIX .. parent
            if not read(pkey, 'status') or expired(pkey, now) then
              return {-3, id, parent}
            end
            known[parent] = true
          end
        end
      end
    end
    -- A task without parents is stored by this call unless it exists: either way a
    -- later task of the call may name it.
    fresh[id] = true
    at = at + 6 + k
  end
end

local last = redis.call('INCRBY', K_SEQ, n)
local out, ready, delayed = {}, {}, {}

-- Does any task of the call exist already? One EXISTS for all of them: when none does
-- (the usual case), `store` need not ask per task. Each redis.call from Lua costs about
-- as much as the write itself.
local keys, any_exists = {}, false
do
  local at, step = 7, 6
  if same then
    at, step = 10, 2
  end
  for i = 1, n do
    keys[i] = PREFIX .. ARGV[at]
    if not same then
      step = 6 + tonumber(ARGV[at + 5])
    end
    at = at + step
  end
  for i = 1, n, 1000 do
    if redis.call('EXISTS', unpack(keys, i, math.min(i + 999, n))) > 0 then
      any_exists = true
      break
    end
  end
end
local stored = {}  -- ids stored by this call: a repeated id is then an existing task

-- Store task number i (0-based) of the call; `parents_at` is the ARGV index before its
-- k parent ids.
local function store(i, id, data, priority, delay, max_attempts, parents_at, k)
  local key = keys[i + 1]
  local exists = stored[id] ~= nil
  if any_exists and not exists then
    exists = redis.call('EXISTS', key) == 1
    if exists and expired(key, now) then
      settle_release(id, read(key, 'status')[1], now)
      forget(id)  -- gone for every reader already: the id is free again
      exists = false
    end
  end
  if exists then
    out[i + 1] = 0
    return
  end
  stored[id] = true
  local seq = (last - n + 1 + i) % 4294967296
  -- As text once, for the hash and the ready set: '%d' is exact and cheaper than the
  -- float formatting Redis would apply to a number twice.
  local score = string.format('%d', tonumber(priority) * 4294967296 + seq)
  local due = now + math.max(0, tonumber(delay))
  -- attempts, token and progress start absent and read as 0; so does due, for a task
  -- due at once (every hash field costs a bulk enqueue time)
  if due > now or k > 0 then
    redis.call('HSET', key, 'data', data, 'status', 'pending', 'max_attempts', max_attempts,
      'score', score, 'due', due)
  else
    redis.call('HSET', key, 'data', data, 'status', 'pending', 'max_attempts', max_attempts,
      'score', score)
  end
  local open, doomed, names = {}, nil, {}
  for j = 1, k do
    local parent = ARGV[parents_at + j]
    names[j] = #parent .. ':' .. parent
    local status = read(PREFIX .. parent, 'status')[1]
    if status == 'failed' or status == 'cancelled' then
      local ended = status == 'failed' and 'failed' or 'was cancelled'
      doomed = doomed or ('parent task ' .. parent .. ' ' .. ended)
    elseif status ~= 'completed' then
      open[#open + 1] = parent
    end
  end
  if k > 0 then
    redis.call('HSET', key, 'parents', table.concat(names))
  end
  local flag = 1
  if doomed then
    fence(key)
    finish(id, 'cancelled', now, {'reason', doomed}, K_WAITING)
    flag = 2
  elseif #open > 0 then
    wait_for_parents(id, open, now)
  elseif due <= now then
    ready[#ready + 1] = score
    ready[#ready + 1] = id
  else
    delayed[#delayed + 1] = due
    delayed[#delayed + 1] = id
  end
  out[i + 1] = flag
end

if same then
  local priority, delay, max_attempts = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
  for i = 0, n - 1 do
    store(i, ARGV[10 + 2 * i], ARGV[11 + 2 * i], priority, delay, max_attempts, 0, 0)
  end
else
  local at = 7
  for i = 0, n - 1 do
    local k = tonumber(ARGV[at + 5])
    store(i, ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], at + 5, k)
    at = at + 6 + k
  end
end

if #ready > 0 then
  zadd_all(K_READY, ready)
  wake()
end
if #delayed > 0 then
  local before = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  zadd_all(K_DELAYED, delayed)
  local after = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if before[2] ~= after[2] then
    wake()  -- the earliest due time moved: idle workers must recompute their wait
  end
end
flush(now)
return out
