-- KEYS: a session
-- ARGV: now, guard ('1': only a live session — the reuse verdict), issued_before ('': the
--       session whatever its age; else only one created before it:
--       rules::sub_revocation_covers)
-- Marks the session revoked (idempotent: the first mark stays). Returns 0 when the guard
-- fails (decide again), else 1.
local s = KEYS[1]
if redis.call('EXISTS', s) == 0 then
  if ARGV[2] == '1' then return 0 end
  return 1
end
if ARGV[2] == '1' and redis.call('HEXISTS', s, 'revoked_at') == 1 then return 0 end
if ARGV[3] ~= '' then
  local created = redis.call('HGET', s, 'created_at')
  if not (created and tonumber(created) < tonumber(ARGV[3])) then return 1 end
end
redis.call('HSETNX', s, 'revoked_at', ARGV[1])
return 1
