-- Operators, roles, API tokens and the first-run bootstrap secret (issue 11). Keep in step with
-- ../postgres/0006_operators.sql.
--
-- Secrets are never stored in the clear: passwords as argon2id PHC strings (the crate's default
-- parameters, in the string), API tokens and bootstrap secrets as SHA-256 hex (long random
-- values, like pool keys), a TOTP secret sealed with the master key (store::crypto, like account
-- tokens). `session_epoch` is part of every session token: bumping it (sign-out, password or
-- role change, disable) revokes all of the operator's sessions at once.

CREATE TABLE operators (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    role               TEXT NOT NULL,
    password_hash      TEXT,
    session_epoch      BIGINT NOT NULL DEFAULT 0,
    disabled           BIGINT NOT NULL DEFAULT 0,
    totp_secret_sealed BLOB,
    totp_enabled       BIGINT NOT NULL DEFAULT 0,
    failed_signins     BIGINT NOT NULL DEFAULT 0,
    locked_until       BIGINT,
    last_signin_at     BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

-- Pools an admin or viewer works on (owners see all pools without rows here).
CREATE TABLE operator_pools (
    operator_id TEXT NOT NULL REFERENCES operators(id) ON DELETE CASCADE,
    pool_id     TEXT NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (operator_id, pool_id)
);
CREATE INDEX operator_pools_pool ON operator_pools (pool_id);

-- API tokens for automation: a role and (below owner) a pool scope.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    label        TEXT NOT NULL UNIQUE,
    token_hash   TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL,
    created_by   TEXT REFERENCES operators(id) ON DELETE SET NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE TABLE api_token_pools (
    token_id TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    pool_id  TEXT NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    PRIMARY KEY (token_id, pool_id)
);
CREATE INDEX api_token_pools_pool ON api_token_pools (pool_id);

-- One-time secrets that create the first owner: valid once (used_at), until expires_at.
CREATE TABLE bootstrap_secrets (
    secret_hash TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- Sign-in attempts that failed, per client address (per-operator counters are on the row):
-- the window start and the count in it.
CREATE TABLE signin_failures (
    client       TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    failures     BIGINT NOT NULL,
    locked_until BIGINT
);

-- Audit reads filter by actor and action, newest first.
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
