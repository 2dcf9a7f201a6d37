-- One key's change, atomically. KEYS: rec, sha, ver, epoch, log, diverged.
-- ARGV: id, expected rev ('' = the key must not exist), record JSON, log MAXLEN,
-- epoch for a new store, number of secrets, the secrets (hex SHA-256, current and retired).
-- Answers {status, detail}: ok/<version>, diverged/<why>, conflict/<rev>, missing, revoked,
-- taken/<sha>. Every check comes before the first write: a script is atomic, not undone.
local diverged = redis.call('GET', KEYS[6])
if diverged then return {'diverged', diverged} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local new = cjson.decode(ARGV[3])
local old_shas = {}
if cur then
  local c = cjson.decode(cur)
  local rev = tonumber(c.rev or 0)
  if ARGV[2] == '' or tonumber(ARGV[2]) ~= rev then return {'conflict', tostring(rev)} end
  -- Revocation is final, whoever writes.
  if c.revoked_at and not new.revoked_at then return {'revoked', ''} end
  old_shas[c.sha256] = true
  if type(c.previous) == 'table' then
    for _, p in ipairs(c.previous) do old_shas[p.sha256] = true end
  end
elseif ARGV[2] ~= '' then
  return {'missing', ''}
end
local new_shas = {}
for i = 1, tonumber(ARGV[6]) do
  local s = ARGV[6 + i]
  local owner = redis.call('HGET', KEYS[2], s)
  if owner and owner ~= ARGV[1] then return {'taken', s} end
  new_shas[s] = true
end
local v = tonumber(redis.call('GET', KEYS[3]) or '0') + 1
local last = redis.call('XREVRANGE', KEYS[5], '+', '-', 'COUNT', 1)[1]
if last and tonumber(string.match(last[1], '^(%d+)')) >= v then
  return {'diverged', 'the change log is ahead of the store version; run `keygate keys push`'}
end
for s, _ in pairs(old_shas) do
  if not new_shas[s] then redis.call('HDEL', KEYS[2], s) end
end
for s, _ in pairs(new_shas) do redis.call('HSET', KEYS[2], s, ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SET', KEYS[4], ARGV[5], 'NX')
redis.call('SET', KEYS[3], v)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], v .. '-0', 'id', ARGV[1])
return {'ok', tostring(v)}
