-- Schema version 1: the original tables.
CREATE TABLE IF NOT EXISTS users (
    sub        TEXT PRIMARY KEY,
    unionid    TEXT UNIQUE,
    phone      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    appid      TEXT NOT NULL,
    openid     TEXT NOT NULL,
    sub        TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (appid, openid)
);
CREATE TABLE IF NOT EXISTS sessions (
    sid         TEXT PRIMARY KEY,
    sub         TEXT NOT NULL,
    appid       TEXT NOT NULL,
    openid      TEXT NOT NULL,
    unionid     TEXT,
    code_hash   TEXT NOT NULL UNIQUE,
    session_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX IF NOT EXISTS sessions_sub ON sessions (sub);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash       TEXT PRIMARY KEY,
    sid        TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX IF NOT EXISTS refresh_tokens_sid ON refresh_tokens (sid);
CREATE TABLE IF NOT EXISTS revocations (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,
    value         TEXT NOT NULL,
    issued_before INTEGER,
    until         INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_value ON revocations (value, kind);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    activate_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS wechat_tokens (
    appid        TEXT PRIMARY KEY,
    sealed       BLOB,
    hash         TEXT,
    expires_at   INTEGER NOT NULL DEFAULT 0,
    refresh_at   INTEGER NOT NULL DEFAULT 0,
    lease_holder TEXT,
    lease_until  INTEGER NOT NULL DEFAULT 0
);
