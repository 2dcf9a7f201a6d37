-- The end of a push: a new epoch (every replica resyncs and merges), the version above any a
-- replica has seen, the old change log gone, writes allowed again.
-- KEYS: ver, epoch, log, diverged. ARGV: new epoch, the highest version a replica saw.
local v = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[2])) + 1
redis.call('SET', KEYS[1], v)
redis.call('SET', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('DEL', KEYS[4])
return v
