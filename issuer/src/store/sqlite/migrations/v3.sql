-- Schema version 3: a user's grants ([`crate::domain::grants`]): scopes (space-separated) and a ban.
CREATE TABLE user_grants (
    sub            TEXT PRIMARY KEY,
    scopes         TEXT NOT NULL DEFAULT '',
    ban_created_at INTEGER,
    ban_until      INTEGER,
    ban_reason     TEXT,
    updated_at     INTEGER NOT NULL
);
