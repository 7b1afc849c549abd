-- KEYS: sessions_exp (the directory's slot)
-- ARGV: prefix, then (sid, sub, code_hash) for each session to remove (DROP_SESSION follows)
-- Takes the dropped sessions off their user's set, their code's single-use mark and, last,
-- the expiry index.
local prefix = ARGV[1]
for i = 2, #ARGV, 3 do
  local sid, sub, code = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if sub ~= '' then redis.call('SREM', prefix .. 'sub_sessions:' .. sub, sid) end
  if code ~= '' then redis.call('DEL', prefix .. 'code:' .. code) end
  redis.call('ZREM', KEYS[1], sid)
end
return 1
