-- KEYS: code, identity, unionid, user, sub_sessions, sessions_exp (the directory's slot)
-- ARGV: by_identity, unionid, by_unionid, sub, create_user, attach_unionid, create_identity,
--       now, sid, session_expires, session_ttl
-- The directory's half of a login (the session and its first refresh token are written next,
-- in the session family's slot, by OPEN_SESSION). Guards first: nothing is written unless
-- every fact the decision used still holds.
-- The code spent: by this very call when it names this login's sid (the cluster client sends
-- a command again on a new connection when the first one's reply was lost; every write below
-- was made by the first run), else by another login.
local spent_by = redis.call('GET', KEYS[1])
if spent_by then
  if spent_by == ARGV[9] then return 'ok' end
  return 'used'
end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 'conflict' end
local unionid = ARGV[2]
if unionid ~= '' and (redis.call('GET', KEYS[3]) or '') ~= ARGV[3] then return 'conflict' end
local user_exists = redis.call('EXISTS', KEYS[4]) == 1
if ARGV[5] == '1' and user_exists then return 'conflict' end
if ARGV[5] ~= '1' and not user_exists then return 'conflict' end
if ARGV[6] == '1' and redis.call('HEXISTS', KEYS[4], 'unionid') == 1 then return 'conflict' end
local sub, now = ARGV[4], ARGV[8]
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[4], 'sub', sub, 'created_at', now, 'updated_at', now)
  if unionid ~= '' then
    redis.call('HSET', KEYS[4], 'unionid', unionid)
    redis.call('SET', KEYS[3], sub)
  end
end
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[4], 'unionid', unionid, 'updated_at', now)
  redis.call('SET', KEYS[3], sub)
end
if ARGV[7] == '1' then redis.call('SET', KEYS[2], sub) end
local sid = ARGV[9]
redis.call('SET', KEYS[1], sid, 'EX', ARGV[11])
redis.call('SADD', KEYS[5], sid)
if redis.call('TTL', KEYS[5]) < tonumber(ARGV[11]) then redis.call('EXPIRE', KEYS[5], ARGV[11]) end
redis.call('ZADD', KEYS[6], ARGV[10], sid)
return 'ok'
