-- KEYS: by_until, entries, by_seq, purged_through, sessions_exp, refresh_exp
-- ARGV: prefix, now, batch
local prefix, now, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local seqs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, batch)
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
local sids = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. now, 'LIMIT', 0, batch)
for _, sid in ipairs(sids) do
  local s = prefix .. 'session:' .. sid
  local fields = redis.call('HMGET', s, 'sub', 'code_hash')
  if fields[1] then redis.call('SREM', prefix .. 'sub_sessions:' .. fields[1], sid) end
  if fields[2] then redis.call('DEL', prefix .. 'code:' .. fields[2]) end
  redis.call('DEL', s)
  redis.call('ZREM', KEYS[5], sid)
end
local hashes = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. now, 'LIMIT', 0, batch)
for _, hash in ipairs(hashes) do
  redis.call('DEL', prefix .. 'refresh:' .. hash)
  redis.call('ZREM', KEYS[6], hash)
end
return {#seqs, #sids, #hashes}
