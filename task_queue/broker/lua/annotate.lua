-- annotate.lua: store what the holders of running tasks noted: context and new log
-- records.
-- KEYS and ARGV 1-4: see lib.lua.
-- ARGV 5 most log records a task keeps, then groups of 5: id, token, context (JSON,
--      '' = unchanged), number of new log records, the records (JSON, one per line).
-- Returns: one integer per task: 1 stored, 0 refused (stale token, gone, not running).

local max_logs = tonumber(ARGV[5])
local out = {}
for i = 6, #ARGV, 5 do
  local id, token, context = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local count, lines = tonumber(ARGV[i + 3]), ARGV[i + 4]
  local key = PREFIX .. id
  local h = read(key, 'status', 'token', 'logs', 'nlogs')
  if h and h[1] == 'processing' and h[2] == token then
    if context ~= '' then
      redis.call('HSET', key, 'context', context)
    end
    if count > 0 then
      local logs, total = lines, count
      if h[3] and h[3] ~= '' then
        logs = h[3] .. '\n' .. lines
        total = total + (tonumber(h[4]) or 0)
      end
      -- keep the newest max_logs records: drop whole lines from the front
      local start = 1
      while total > max_logs do
        local newline = string.find(logs, '\n', start, true)
        total = total - 1
        if not newline then
          start = #logs + 1
          break
        end
        start = newline + 1
      end
      redis.call('HSET', key, 'logs', string.sub(logs, start), 'nlogs', total)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
