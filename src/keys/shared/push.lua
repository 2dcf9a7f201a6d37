-- Records from a replica's snapshot into the store (`keygate keys push`). KEYS: rec, sha.
-- ARGV: record JSONs. A record is written when the store lacks it or has a lower rev, never
-- over a revoked one with an unrevoked one; its secrets then point at it. Answers the
-- number written.
local written = 0
for i = 1, #ARGV do
  local rec = cjson.decode(ARGV[i])
  local cur = redis.call('HGET', KEYS[1], rec.id)
  local take = true
  if cur then
    local c = cjson.decode(cur)
    if c.revoked_at and not rec.revoked_at then
      take = false
    elseif tonumber(c.rev or 0) >= tonumber(rec.rev or 0) and not (rec.revoked_at and not c.revoked_at) then
      take = false
    end
    if take then
      redis.call('HDEL', KEYS[2], c.sha256)
      if type(c.previous) == 'table' then
        for _, p in ipairs(c.previous) do redis.call('HDEL', KEYS[2], p.sha256) end
      end
    end
  end
  if take then
    redis.call('HSET', KEYS[1], rec.id, ARGV[i])
    redis.call('HSET', KEYS[2], rec.sha256, rec.id)
    if type(rec.previous) == 'table' then
      for _, p in ipairs(rec.previous) do redis.call('HSET', KEYS[2], p.sha256, rec.id) end
    end
    written = written + 1
  end
end
return written
