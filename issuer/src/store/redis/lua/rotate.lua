-- KEYS: old refresh, new refresh, session, the session's family set (one slot: the family's)
-- ARGV: now, new_expires, ttl, new_hash, used_at ('' for a Rotate verdict)
-- Applies a Rotate verdict only if the token is still unused, a Sibling verdict only if it is
-- still used at the time it was read (the grace never slides); both only while the session
-- is live. A Rotate verdict applied already by this very call — the cluster client sends a
-- command again on a new connection when the first one's reply was lost — answers as the
-- first run did: its new token exists, whose hash only this call knows. (Read as a second
-- use instead, with a grace of 0 the retry revoked the session it had just rotated.)
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local used_at = redis.call('HGET', KEYS[1], 'used_at')
if ARGV[5] == '' then
  if used_at and redis.call('EXISTS', KEYS[2]) == 0 then return false end
elseif used_at ~= ARGV[5] then return false end
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('HEXISTS', KEYS[3], 'revoked_at') == 1 then return false end
if not used_at then redis.call('HSET', KEYS[1], 'used_at', ARGV[1]) end
local sid = redis.call('HGET', KEYS[1], 'sid')
redis.call('HSET', KEYS[2], 'sid', sid, 'created_at', ARGV[1], 'expires_at', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
if redis.call('TTL', KEYS[4]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[4], ARGV[3]) end
return redis.call('HGETALL', KEYS[3])
