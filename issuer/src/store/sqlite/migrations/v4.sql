-- Schema version 4: short-lived values taken once (pending web logins).
CREATE TABLE ephemeral (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX ephemeral_expires ON ephemeral (expires_at);
