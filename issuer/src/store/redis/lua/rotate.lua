-- KEYS: old refresh, its successor, session (counting the tokens it is given; one slot: the
-- family's)
-- ARGV: now, new_expires, ttl, used_at ('' for a Rotate verdict), call id
-- Applies a Rotate verdict only if the token is still unused, a Repeat verdict only if it is
-- still used at the time it was read (the grace never slides); both only while the session
-- is live. A token has one successor whoever rotates it (tokens::successor_refresh_token): it
-- is written once, and a Repeat hands it out as written (writing it only if it is missing: a
-- release that drew successors at random rotated the token). Answers the successor's
-- expiry and the session. A Rotate verdict applied already by this very call — the cluster
-- client sends a command again on a new connection when the first one's reply was lost —
-- answers as the first run did: the token keeps the id of the call that rotated it. (Read as
-- a second use instead, with a grace of 0 the retry revoked the session it had just rotated;
-- the successor's existence cannot tell, every rotation of the token writes the same one.)
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local used_at = redis.call('HGET', KEYS[1], 'used_at')
if ARGV[4] == '' then
  if used_at and redis.call('HGET', KEYS[1], 'rotated_by') ~= ARGV[5] then return false end
elseif used_at ~= ARGV[4] then return false end
if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('HEXISTS', KEYS[3], 'revoked_at') == 1 then return false end
if not used_at then
  redis.call('HSET', KEYS[1], 'used_at', ARGV[1], 'rotated_by', ARGV[5])
else
  -- A repeat (or this call's resend) writes too: WAIT covers what its own connection
  -- propagated (Redis 7.2+ moves a connection's offset only then), and the successor handed
  -- out may have been written on another connection; a write of ours after it makes our WAIT
  -- cover it (one replication stream).
  redis.call('HSET', KEYS[1], 'repeated_at', ARGV[1])
end
local expires_at = redis.call('HGET', KEYS[2], 'expires_at')
if not expires_at then
  local sid = redis.call('HGET', KEYS[1], 'sid')
  redis.call('HSET', KEYS[2], 'sid', sid, 'created_at', ARGV[1], 'expires_at', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'given', 1)
  expires_at = ARGV[2]
end
return {expires_at, redis.call('HGETALL', KEYS[3])}
