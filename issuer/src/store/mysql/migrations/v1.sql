-- Schema version 1 on MySQL/MariaDB: the tables of SQLite's schema version 5, in InnoDB.
-- Identifiers compare byte for byte (utf8mb4_bin: an openid is case-sensitive). Each
-- statement ends with `;` at the end of a line (the issuer splits the file there); no
-- statement holds a `;` of its own. DDL commits by itself in MySQL: every statement is
-- written to be re-run safely (IF NOT EXISTS, INSERT IGNORE) after an interrupted migration.
CREATE TABLE IF NOT EXISTS users (
    sub        VARCHAR(191) NOT NULL PRIMARY KEY,
    unionid    VARCHAR(191) NULL UNIQUE,
    phone      TEXT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    risk_appid VARCHAR(191) NULL,
    risk_rank  INT NULL,
    risk_at    BIGINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS identities (
    appid      VARCHAR(191) NOT NULL,
    openid     VARCHAR(191) NOT NULL,
    sub        VARCHAR(191) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (appid, openid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS sessions (
    sid         VARCHAR(191) NOT NULL PRIMARY KEY,
    sub         VARCHAR(191) NOT NULL,
    appid       VARCHAR(191) NOT NULL,
    openid      VARCHAR(191) NOT NULL,
    unionid     VARCHAR(191) NULL,
    code_hash   VARCHAR(191) NOT NULL UNIQUE,
    session_key BLOB NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NULL,
    KEY sessions_sub (sub),
    KEY sessions_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS refresh_tokens (
    hash       VARCHAR(191) NOT NULL PRIMARY KEY,
    sid        VARCHAR(191) NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT NULL,
    KEY refresh_tokens_sid (sid),
    KEY refresh_tokens_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS revocations (
    seq           BIGINT NOT NULL PRIMARY KEY,
    kind          VARCHAR(16) NOT NULL,
    value         VARCHAR(191) NOT NULL,
    issued_before BIGINT NULL,
    until         BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    KEY revocations_value (value, kind),
    KEY revocations_until (until)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS counters (
    name  VARCHAR(64) NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT IGNORE INTO counters (name, value) VALUES ('revocation_seq', 1), ('purged_through', 0), ('signing_keys', 0);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid         VARCHAR(191) NOT NULL PRIMARY KEY,
    alg         VARCHAR(32) NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    activate_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS wechat_tokens (
    appid        VARCHAR(191) NOT NULL PRIMARY KEY,
    sealed       BLOB NULL,
    hash         VARCHAR(191) NULL,
    expires_at   BIGINT NOT NULL DEFAULT 0,
    refresh_at   BIGINT NOT NULL DEFAULT 0,
    lease_holder VARCHAR(191) NULL,
    lease_until  BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS user_grants (
    sub            VARCHAR(191) NOT NULL PRIMARY KEY,
    scopes         TEXT NOT NULL,
    ban_created_at BIGINT NULL,
    ban_until      BIGINT NULL,
    ban_reason     TEXT NULL,
    updated_at     BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE TABLE IF NOT EXISTS ephemeral (
    name       VARCHAR(191) NOT NULL PRIMARY KEY,
    value      MEDIUMBLOB NOT NULL,
    expires_at BIGINT NOT NULL,
    KEY ephemeral_expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
