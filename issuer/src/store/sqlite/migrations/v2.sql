-- Schema version 2: a session may have no `session_key` (web OAuth2 logins). SQLite cannot
-- drop a NOT NULL constraint in place, so the table is rebuilt.
CREATE TABLE sessions_v2 (
    sid         TEXT PRIMARY KEY,
    sub         TEXT NOT NULL,
    appid       TEXT NOT NULL,
    openid      TEXT NOT NULL,
    unionid     TEXT,
    code_hash   TEXT NOT NULL UNIQUE,
    session_key BLOB,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
INSERT INTO sessions_v2 (sid, sub, appid, openid, unionid, code_hash, session_key, created_at, expires_at, revoked_at)
    SELECT sid, sub, appid, openid, unionid, code_hash, session_key, created_at, expires_at, revoked_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v2 RENAME TO sessions;
CREATE INDEX sessions_sub ON sessions (sub);
