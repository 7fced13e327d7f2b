-- Issue 15: per-key policy, token budgets and quota shares. Keep the two backends' files in step.

-- The key's policy as the JSON of codexmesh_model::policy::KeyPolicy (checked by
-- KeyPolicy::validate before it is written). NULL: no policy.
ALTER TABLE pool_keys ADD COLUMN policy TEXT;

-- What the request log keeps of a policy refusal and of an answer's stated usage.
ALTER TABLE outcomes ADD COLUMN policy_refusal TEXT;
ALTER TABLE outcomes ADD COLUMN input_tokens BIGINT;
ALTER TABLE outcomes ADD COLUMN output_tokens BIGINT;

-- Tokens counted per key in its latest UTC day and week (unix seconds of their starts; weeks
-- start Monday 00:00 UTC). One row per key: a report of a later day (week) starts that count over.
CREATE TABLE key_token_usage (
    key_id           TEXT PRIMARY KEY,
    day_start        BIGINT NOT NULL,
    tokens_today     BIGINT NOT NULL,
    week_start       BIGINT NOT NULL,
    tokens_this_week BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- Quota shares (docs/design.md "Quota shares"): the last quota evidence per account the
-- attribution used (unix seconds for resets, ms for observed_at).
CREATE TABLE share_marks (
    account_id          TEXT PRIMARY KEY,
    primary_used        REAL,
    primary_resets_at   BIGINT,
    secondary_used      REAL,
    secondary_resets_at BIGINT,
    observed_at         BIGINT NOT NULL
);

-- Per account, what each key used of it since its last evidence (tokens and requests).
CREATE TABLE share_pending (
    account_id TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    tokens     BIGINT NOT NULL,
    requests   BIGINT NOT NULL,
    PRIMARY KEY (account_id, key_id)
);

-- Window points (percent of one account's window) attributed to a key at a time (unix ms);
-- window_kind is primary or secondary. Pruned after 7 days.
CREATE TABLE share_points (
    key_id      TEXT NOT NULL,
    window_kind TEXT NOT NULL,
    at          BIGINT NOT NULL,
    account_id  TEXT NOT NULL,
    points      REAL NOT NULL,
    PRIMARY KEY (key_id, window_kind, at, account_id)
);
CREATE INDEX share_points_at ON share_points (at);
