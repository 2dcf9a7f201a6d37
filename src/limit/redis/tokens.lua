local cap = tonumber(ARGV[1])
local now_t = redis.call('TIME')
local now = now_t[1] * 1000 + now_t[2] / 1000
local st = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(st[1]) or cap
local ts = tonumber(st[2]) or now
tokens = math.min(cap, tokens + (now - ts) * cap / 60000)
local ok, wait = 1, 0
if ARGV[2] == 'reserve' then
  local cost = math.min(tonumber(ARGV[3]), cap)
  if tokens >= cost then tokens = tokens - cost else ok = 0; wait = math.ceil((cost - tokens) * 60000 / cap) end
else
  tokens = math.min(cap, tokens + tonumber(ARGV[3]))
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.3f', tokens), 'ts', string.format('%.3f', now))
redis.call('PEXPIRE', KEYS[1], 120000)
return {ok, math.floor(tokens), wait}
