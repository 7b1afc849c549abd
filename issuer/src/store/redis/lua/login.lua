-- KEYS: code, identity, unionid, user, session, refresh, sub_sessions, sessions_exp, refresh_exp
-- Guards first (nothing is written unless every fact the decision used still holds).
if redis.call('EXISTS', KEYS[1]) == 1 then return 'used' end
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
redis.call('HSET', KEYS[5], 'sid', sid, 'sub', sub, 'appid', ARGV[10], 'openid', ARGV[11],
  'code_hash', ARGV[18], 'created_at', now, 'expires_at', ARGV[14])
if unionid ~= '' then redis.call('HSET', KEYS[5], 'unionid', unionid) end
if ARGV[13] == '1' then redis.call('HSET', KEYS[5], 'session_key', ARGV[12]) end
redis.call('EXPIRE', KEYS[5], ARGV[15])
redis.call('SET', KEYS[1], sid, 'EX', ARGV[15])
redis.call('SADD', KEYS[7], sid)
if redis.call('TTL', KEYS[7]) < tonumber(ARGV[15]) then redis.call('EXPIRE', KEYS[7], ARGV[15]) end
redis.call('ZADD', KEYS[8], ARGV[14], sid)
redis.call('HSET', KEYS[6], 'sid', sid, 'created_at', now, 'expires_at', ARGV[16])
redis.call('EXPIRE', KEYS[6], ARGV[17])
redis.call('ZADD', KEYS[9], ARGV[16], ARGV[19])
return 'ok'
