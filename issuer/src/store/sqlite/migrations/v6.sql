-- Schema version 6: the purge's expiry indexes (without them each purge scanned the sessions,
-- refresh-token and revocation tables whole, holding the writer and the store's connection).
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
CREATE INDEX revocations_until ON revocations (until);
