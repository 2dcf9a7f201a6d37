-- Marks a notification settled, unless another replica holds its claim. KEYS[1] the claim,
-- ARGV[1] the replica, ARGV[2] how long to remember it (seconds). Answers 1 when marked.
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] and v ~= 'settled' then
  return 0
end
redis.call('SET', KEYS[1], 'settled', 'EX', ARGV[2])
return 1
