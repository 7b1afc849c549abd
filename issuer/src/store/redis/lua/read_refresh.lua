-- KEYS: refresh; ARGV: prefix. The token and its session, read together.
local t = redis.call('HMGET', KEYS[1], 'sid', 'expires_at', 'used_at')
if not t[1] then return false end
local s = redis.call('HMGET', ARGV[1] .. 'session:' .. t[1], 'expires_at', 'revoked_at')
if not s[1] then return false end
return {t[1], t[2], t[3] or '', s[1], s[2] or ''}
