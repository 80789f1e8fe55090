-- progress.lua: store a running task's progress.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 id, 6 token ('' = any holder), 7 progress (0.0 to 1.0).
-- Returns: 1 stored, 0 not stored (no such task, final, or stale token).

local id, token, progress = ARGV[5], ARGV[6], ARGV[7]
local key = PREFIX .. id
local h = read(key, 'status', 'token')
if not h or (h[1] ~= 'pending' and h[1] ~= 'processing') then
  return 0
end
if token ~= '' and h[2] ~= token then
  return 0
end
redis.call('HSET', key, 'progress', progress)
return 1
