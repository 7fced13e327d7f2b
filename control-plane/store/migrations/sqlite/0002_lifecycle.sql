-- Account lifecycle (SQLite). Keep in step with ../postgres/0002_lifecycle.sql.
-- Token refresh bookkeeping, store leases, quota evidence, health and activity counters,
-- watched-folder provenance.

-- Store revision at which the current access token was written (snapshot Account.token_revision).
ALTER TABLE accounts ADD COLUMN token_revision BIGINT NOT NULL DEFAULT 0;
-- Last successful refresh (unix ms).
ALTER TABLE accounts ADD COLUMN last_refresh_at BIGINT;
-- Consecutive transient refresh failures, and when the next attempt is due (backoff).
ALTER TABLE accounts ADD COLUMN refresh_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN next_refresh_at BIGINT;
-- Short description of the last refresh failure (never a token or a body).
ALTER TABLE accounts ADD COLUMN last_refresh_error TEXT;
-- The published health score (0..100), as the snapshot carries it.
ALTER TABLE accounts ADD COLUMN health BIGINT NOT NULL DEFAULT 100;
-- Accounts imported from a watched folder: the file and the SHA-256 (hex) of its content.
ALTER TABLE accounts ADD COLUMN source_path TEXT;
ALTER TABLE accounts ADD COLUMN source_hash TEXT;

-- Leases: who may do a piece of work (refresh of one account, a quota poll) until when.
-- Taken by a conditional upsert; several processes (CLI, serve replicas) share them.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The freshest quota evidence per account and window (active polls and passive reports).
-- resets_at: unix seconds (0 = unknown); observed_at: unix ms.
CREATE TABLE account_quota (
    account_id               TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    primary_used_percent     REAL,
    primary_window_minutes   BIGINT,
    primary_resets_at        BIGINT,
    primary_observed_at      BIGINT,
    primary_source           TEXT,
    secondary_used_percent   REAL,
    secondary_window_minutes BIGINT,
    secondary_resets_at      BIGINT,
    secondary_observed_at    BIGINT,
    secondary_source         TEXT,
    credits_has_credits      BIGINT,
    credits_unlimited        BIGINT,
    credits_balance          TEXT,
    credits_observed_at      BIGINT,
    plan                     TEXT,
    plan_observed_at         BIGINT,
    -- Bumped by every write: compare-and-set for writers that do not bump meta.revision.
    version                  BIGINT NOT NULL DEFAULT 0,
    updated_at               BIGINT NOT NULL
);

-- All-time activity counters per account (in-window ones are computed from outcomes).
CREATE TABLE account_stats (
    account_id       TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    requests         BIGINT NOT NULL DEFAULT 0,
    successes        BIGINT NOT NULL DEFAULT 0,
    fallbacks_served BIGINT NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL
);

ALTER TABLE outcomes ADD COLUMN error_source TEXT;
ALTER TABLE outcomes ADD COLUMN fallback BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outcomes ADD COLUMN retry_after BIGINT;
ALTER TABLE outcomes ADD COLUMN token_expires_at BIGINT;
