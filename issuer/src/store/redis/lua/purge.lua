-- KEYS: by_until, entries, by_seq, purged_through, sessions_exp, refresh_exp (the directory's
--       and the feed's slot)
-- ARGV: prefix, now, batch
-- Removes expired revocation entries — the lowest seqs, up to the first live one, so the
-- purge watermark stays below every live entry (an entry's until does not grow with its seq:
-- purging every expired one moved the watermark past live ones, and a reader loading the set
-- in pages was sent its first page again and again) — and the refresh tokens of
-- the expiry index older versions kept (refresh_exp; tokens are now left to their TTLs), and
-- returns the sessions that ended: {entries removed, tokens removed, sid...}.
-- Each ended session is then dropped in its family's slot (DROP_SESSION) and forgotten here
-- (FORGET_SESSIONS), which takes it off sessions_exp last: a purge cut short is finished by
-- the next one.
local prefix, now, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local seqs = {}
for _, seq in ipairs(redis.call('ZRANGE', KEYS[3], 0, batch - 1)) do
  local expires = redis.call('ZSCORE', KEYS[1], seq)
  if expires and tonumber(expires) >= now then break end
  table.insert(seqs, seq)
end
local highest = nil
for _, seq in ipairs(seqs) do
  local json = redis.call('HGET', KEYS[2], seq)
  if json then
    local e = cjson.decode(json)
    redis.call('ZREM', prefix .. 'rev:' .. e['kind'] .. ':' .. e['value'], seq)
  end
  redis.call('HDEL', KEYS[2], seq)
  redis.call('ZREM', KEYS[3], seq)
  redis.call('ZREM', KEYS[1], seq)
  local n = tonumber(seq)
  if highest == nil or n > highest then highest = n end
end
if highest ~= nil then
  -- rules::next_watermark: never goes down.
  local current = tonumber(redis.call('GET', KEYS[4]) or '0')
  if highest > current then redis.call('SET', KEYS[4], string.format('%d', highest)) end
end
local hashes = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. now, 'LIMIT', 0, batch)
for _, hash in ipairs(hashes) do
  redis.call('DEL', prefix .. 'refresh:' .. hash)
  redis.call('ZREM', KEYS[6], hash)
end
local result = {#seqs, #hashes}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. now, 'LIMIT', 0, batch)) do
  table.insert(result, sid)
end
return result
