-- KEYS: seq, entries, by_seq, by_until, index, seq_epoch, call (the feed's slot)
-- ARGV: kind, value, issued_before or '', until, channel, gap
-- Appends one revocation entry to the feed. The sessions it covers are marked before, by
-- MARK_SESSION in their own slots (RedisStore::revoke_entry). The call's entry is kept 60 s
-- under its id: the cluster client sends a script again when its answer was lost, and that
-- run answers the entry the first one appended rather than append it again.
local done = redis.call('GET', KEYS[7])
if done then return done end
local kind, value = ARGV[1], ARGV[2]
-- A primary that is not the one the last revocation was written on (a failover, or a restart)
-- may have lost revocations whose seq a sidecar already holds as its cursor: jump the seq
-- past them, so no new entry takes a seq that was served before (module docs, "The feed").
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local epoch = redis.call('GET', KEYS[6])
-- The first revocation of a store too: a primary without the epoch may be a copy taken
-- before revocations the old one numbered.
if epoch ~= replid then
  redis.call('INCRBY', KEYS[1], ARGV[6])
  -- On a change of primary (not the store's first revocation), at least to this primary's
  -- time in microseconds: a gap from the seq it holds is not enough when it lags another
  -- promoted primary that numbered revocations past its copy (two failovers in a row), and
  -- times only grow between primaries whose clocks agree to the length of a failover.
  -- Below 2^53 for centuries: exact in JSON and in a double.
  if epoch then
    local now = redis.call('TIME')
    local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
    if tonumber(redis.call('GET', KEYS[1])) < floor then
      redis.call('SET', KEYS[1], string.format('%d', floor))
    end
  end
  redis.call('SET', KEYS[6], replid)
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then seq = redis.call('INCR', KEYS[1]) end
-- As digits: Lua's own conversion of a number keeps 14 significant digits, which a seq past
-- a failover's time floor has more of.
seq = string.format('%d', seq)
local json = '{"seq":' .. seq .. ',"kind":"' .. kind .. '","value":' .. cjson.encode(value)
if ARGV[3] ~= '' then json = json .. ',"issued_before":' .. ARGV[3] end
json = json .. ',"until":' .. ARGV[4] .. '}'
redis.call('HSET', KEYS[2], seq, json)
redis.call('ZADD', KEYS[3], seq, seq)
redis.call('ZADD', KEYS[4], ARGV[4], seq)
local score = ARGV[3]
if score == '' then score = '0' end
redis.call('ZADD', KEYS[5], score, seq)
redis.call('PUBLISH', ARGV[5], seq)
redis.call('SET', KEYS[7], json, 'EX', 60)
return json
