-- KEYS: refresh, session; ARGV: the sid read from the token before (the session key is
-- declared, as Redis Cluster requires). The token and its session, read together (with the
-- session's pending `sid` entry, if any: MARK_SESSION).
local t = redis.call('HMGET', KEYS[1], 'sid', 'expires_at', 'used_at')
if not t[1] then return false end
if t[1] ~= ARGV[1] then return 'retry' end
local s = redis.call('HMGET', KEYS[2], 'expires_at', 'revoked_at', 'pending_until')
if not s[1] then return false end
return {t[1], t[2], t[3] or '', s[1], s[2] or '', s[3] or ''}
