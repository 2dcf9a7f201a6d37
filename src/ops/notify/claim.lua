-- Claims notifications for one replica. KEYS: one claim key per notification; ARGV[1] the
-- replica, ARGV[2] the claim's lease in seconds. Answers, per key: 1 this replica's (taken
-- now with SET NX, or already its own: the lease renewed), 0 another replica's (it is sending
-- it), 2 settled (sent, refused or given up, by whichever replica).
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('SET', k, ARGV[1], 'NX', 'EX', ARGV[2]) then
    out[i] = 1
  else
    local v = redis.call('GET', k)
    if v == ARGV[1] then
      redis.call('EXPIRE', k, ARGV[2])
      out[i] = 1
    elseif v == 'settled' then
      out[i] = 2
    else
      out[i] = 0
    end
  end
end
return out
