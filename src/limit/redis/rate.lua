local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local now_t = redis.call('TIME')
local now = now_t[1] * 1000000 + now_t[2]
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + t
if new_tat - tau > now then
  return {0, 0, new_tat - tau - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((now + tau - new_tat) / t), 0}
