-- KEYS: session, refresh (one slot: the session family's)
-- ARGV: sid, sub, appid, openid, unionid, session_key, has_key, code_hash, now,
--       session_expires, session_ttl, refresh_expires, refresh_ttl
-- A login's session and its first refresh token, after LOGIN wrote the directory's half. The
-- session counts the refresh tokens it is given (`given`; a family set, kept by releases before,
-- held a hash a rotation to the session's end, only ever counted — about 250 KB for a session
-- refreshed every 15 minutes for 30 days).
redis.call('HSET', KEYS[1], 'sid', ARGV[1], 'sub', ARGV[2], 'appid', ARGV[3], 'openid', ARGV[4],
  'code_hash', ARGV[8], 'created_at', ARGV[9], 'expires_at', ARGV[10], 'given', 1)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'unionid', ARGV[5]) end
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'session_key', ARGV[6]) end
redis.call('EXPIRE', KEYS[1], ARGV[11])
redis.call('HSET', KEYS[2], 'sid', ARGV[1], 'created_at', ARGV[9], 'expires_at', ARGV[12])
redis.call('EXPIRE', KEYS[2], ARGV[13])
return 1
