-- KEYS: seq, entries, by_seq, by_until, index, seq_epoch, then for kind sid the session, for
-- kind sub the user's sessions set and each session in it (every key declared, as Redis
-- Cluster requires: a key a script discovers can be half migrated)
-- ARGV: prefix, kind, value, issued_before or '', until, now, guard, channel, gap
local prefix, kind, value = ARGV[1], ARGV[2], ARGV[3]
if ARGV[7] == '1' then
  -- A reuse verdict: only while the session is still live (else decide again).
  local s = KEYS[7]
  if redis.call('EXISTS', s) == 0 or redis.call('HEXISTS', s, 'revoked_at') == 1 then return false end
end
if kind == 'sub' then
  -- The sessions declared are the user's sessions now (else read them and come again).
  if redis.call('SCARD', KEYS[7]) ~= #KEYS - 7 then return 'retry' end
  for i = 8, #KEYS do
    if redis.call('SISMEMBER', KEYS[7], string.sub(KEYS[i], #prefix + 9)) == 0 then return 'retry' end
  end
end
-- A primary that is not the one the last revocation was written on (a failover, or a restart)
-- may have lost revocations whose seq a sidecar already holds as its cursor: jump the seq
-- past them, so no new entry takes a seq that was served before (module docs, "The feed").
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local epoch = redis.call('GET', KEYS[6])
if epoch ~= replid then
  if epoch then redis.call('INCRBY', KEYS[1], ARGV[9]) end
  redis.call('SET', KEYS[6], replid)
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then seq = redis.call('INCR', KEYS[1]) end
if kind == 'sid' then
  local s = KEYS[7]
  if redis.call('EXISTS', s) == 1 then redis.call('HSETNX', s, 'revoked_at', ARGV[6]) end
elseif kind == 'sub' then
  local before = tonumber(ARGV[4])
  for i = 8, #KEYS do
    local s = KEYS[i]
    local created = redis.call('HGET', s, 'created_at')
    -- rules::sub_revocation_covers: created_at < issued_before
    if created and tonumber(created) < before then redis.call('HSETNX', s, 'revoked_at', ARGV[6]) end
  end
end
local json = '{"seq":' .. seq .. ',"kind":"' .. kind .. '","value":' .. cjson.encode(value)
if ARGV[4] ~= '' then json = json .. ',"issued_before":' .. ARGV[4] end
json = json .. ',"until":' .. ARGV[5] .. '}'
redis.call('HSET', KEYS[2], seq, json)
redis.call('ZADD', KEYS[3], seq, seq)
redis.call('ZADD', KEYS[4], ARGV[5], seq)
local score = ARGV[4]
if score == '' then score = '0' end
redis.call('ZADD', KEYS[5], score, seq)
redis.call('PUBLISH', ARGV[8], seq)
return json
