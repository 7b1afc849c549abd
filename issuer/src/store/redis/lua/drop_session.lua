-- KEYS: session, its family set (one slot: the family's)
-- Removes an ended session (the directory has forgotten it: FORGET_SESSIONS). Returns how many
-- refresh tokens it was given: its `given` count, and the members of its family set, which
-- releases before the count kept one hash per rotation there (the set goes with it). The
-- tokens themselves are left to their TTLs (their expiry + 1 day, never past the session's
-- end + 1 day): a token whose session is gone reads as unknown. Deleting each in this script
-- made its run grow with the session's rotations — a session refreshed every second for 30
-- days held the server for seconds (past `busy-reply-threshold`: every client answered BUSY)
-- — and UNLINK frees a large set off the server's main thread.
local given = tonumber(redis.call('HGET', KEYS[1], 'given') or '0') + redis.call('SCARD', KEYS[2])
redis.call('UNLINK', KEYS[2], KEYS[1])
return given
