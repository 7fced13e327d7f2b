-- codexmesh initial schema (SQLite). Keep in step with ../postgres/0001_initial.sql.
-- Times are unix milliseconds (BIGINT); flags are 0/1 integers: portable through sqlx Any.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
-- Bumped by every mutation, in the same transaction; snapshot versions are taken from it.
INSERT INTO meta (key, value) VALUES ('revision', 1);

CREATE TABLE pools (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    strategy       TEXT NOT NULL DEFAULT 'round_robin',
    max_attempts   BIGINT NOT NULL DEFAULT 3,
    explain_routes BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL
);

CREATE TABLE accounts (
    id                      TEXT PRIMARY KEY,
    pool_id                 TEXT NOT NULL REFERENCES pools(id),
    label                   TEXT NOT NULL,
    chatgpt_account_id      TEXT NOT NULL,
    chatgpt_user_id         TEXT,
    email                   TEXT,
    plan                    TEXT,
    state                   TEXT NOT NULL DEFAULT 'active',
    state_reason            TEXT,
    cooldown_until          BIGINT,
    priority                BIGINT NOT NULL DEFAULT 0,
    weight                  BIGINT NOT NULL DEFAULT 1,
    access_token_expires_at BIGINT,
    -- AES-256-GCM sealed under the master key, account id as associated data.
    sealed_access_token     BLOB NOT NULL,
    sealed_refresh_token    BLOB NOT NULL,
    sealed_id_token         BLOB NOT NULL,
    tokens_updated_at       BIGINT NOT NULL,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL,
    UNIQUE (pool_id, chatgpt_account_id)
);
CREATE INDEX accounts_label ON accounts (label);

CREATE TABLE pool_keys (
    id         TEXT PRIMARY KEY,
    pool_id    TEXT NOT NULL REFERENCES pools(id),
    label      TEXT NOT NULL,
    -- Lowercase hex SHA-256 of the raw key; the raw key is never stored.
    key_hash   TEXT NOT NULL UNIQUE,
    status     TEXT NOT NULL DEFAULT 'active',
    operator   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX pool_keys_pool ON pool_keys (pool_id);

-- Outcome metadata reported by the data path: never bodies, prompts or tokens.
CREATE TABLE outcomes (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at              BIGINT NOT NULL,
    node_id                  TEXT NOT NULL,
    pool_id                  TEXT NOT NULL,
    key_id                   TEXT NOT NULL,
    account_id               TEXT NOT NULL,
    attempt                  BIGINT NOT NULL,
    status                   BIGINT NOT NULL,
    error_code               TEXT,
    started_at               BIGINT NOT NULL,
    latency_ms               BIGINT NOT NULL,
    request_path             TEXT,
    snapshot_version         BIGINT NOT NULL,
    plan                     TEXT,
    resets_at                BIGINT,
    primary_used_percent     REAL,
    primary_window_minutes   BIGINT,
    primary_resets_at        BIGINT,
    secondary_used_percent   REAL,
    secondary_window_minutes BIGINT,
    secondary_resets_at      BIGINT,
    quota_observed_at        BIGINT,
    credits_has_credits      BIGINT NOT NULL DEFAULT 0,
    credits_unlimited        BIGINT NOT NULL DEFAULT 0,
    credits_balance          TEXT
);
CREATE INDEX outcomes_account_time ON outcomes (account_id, received_at);
CREATE INDEX outcomes_time ON outcomes (received_at);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT,
    -- JSON, never secrets.
    detail   TEXT,
    revision BIGINT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
