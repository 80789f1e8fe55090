-- complete.lua: record the success of one or many tasks and end their leases.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 onwards: groups of 3: id, token ('' = administrative, any non-final task),
--         result (JSON).
-- Returns: one integer per task: 1 completed (or already was, by this holder),
--          0 refused (stale holder), -1 no such task, -2 already final otherwise.

local now = now_ms()
local out = {}
for i = 5, #ARGV, 3 do
  local id, token = ARGV[i], ARGV[i + 1]
  local h, reply = check_holder(PREFIX .. id, token, 'completed')
  if h then
    finish(id, 'completed', now, {'result', ARGV[i + 2], 'progress', 1}, holder_set(h[1]))
    reply = 1
  end
  out[#out + 1] = reply
end
flush(now)
return out
