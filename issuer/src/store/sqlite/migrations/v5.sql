-- Schema version 5: the risk rank WeChat gave the user at the last judged login.
ALTER TABLE users ADD COLUMN risk_appid TEXT;
ALTER TABLE users ADD COLUMN risk_rank INTEGER;
ALTER TABLE users ADD COLUMN risk_at INTEGER;
