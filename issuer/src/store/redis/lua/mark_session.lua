-- KEYS: a session
-- ARGV: now, guard ('': none; else the reuse verdict's call id: only a live session), reach ('': a `sid`
--       revocation of this session; 'all': a `sub` revocation ending every live session of
--       its user; else a `sub` revocation's issued_before: only a session created before it —
--       rules::sub_revocation_covers), pending_until ('': none; else the `until` of the
--       session's own `sid` entry, which the feed's slot is written next)
-- Marks the session revoked (idempotent: the first mark stays) and, for a `sid` revocation,
-- notes its entry as pending until RedisStore::revoke_entry clears it: a reader that finds it
-- still set publishes the entry (the revocation was cut between the two slots). Returns
-- {code, revoked_at}: code 0 when the guard fails (decide again), 2 when there is no such
-- session (yet: a login's session is listed in its user's set before it is written), 3 when
-- this call revoked it, 4 when a `sub` revocation covers it and it was revoked before (at
-- revoked_at, given only then), else 1 (not covered by issued_before; a `sid` revocation of
-- a session revoked before). A guarded mark keeps its call id (`revoked_by`): the cluster
-- client sends a script again when its answer was lost, and that run, finding the session
-- revoked by its own first run, answers 3 as the first did (it failed the guard: the reuse was
-- then taken for a session revoked before — no reuse counted, logged or answered as such).
local s = KEYS[1]
local guard = ARGV[2]
if redis.call('EXISTS', s) == 0 then
  if guard ~= '' then return {0, 0} end
  return {2, 0}
end
if guard ~= '' and redis.call('HEXISTS', s, 'revoked_at') == 1 then
  if redis.call('HGET', s, 'revoked_by') == guard then return {3, 0} end
  return {0, 0}
end
if ARGV[3] ~= '' and ARGV[3] ~= 'all' then
  local created = redis.call('HGET', s, 'created_at')
  if not (created and tonumber(created) < tonumber(ARGV[3])) then return {1, 0} end
end
local now_revoked = redis.call('HSETNX', s, 'revoked_at', ARGV[1])
if now_revoked == 1 and guard ~= '' then redis.call('HSET', s, 'revoked_by', guard) end
if ARGV[4] ~= '' then redis.call('HSET', s, 'pending_until', ARGV[4]) end
if now_revoked == 1 then return {3, 0} end
if ARGV[3] ~= '' then
  return {4, tonumber(redis.call('HGET', s, 'revoked_at'))}
end
return {1, 0}
