-- Invites ("friends mode", issue 15): a code an operator hands out; whoever redeems it on the
-- invite page gets a pool key of their own. The code is stored only as its SHA-256 (lowercase
-- hex), like pool keys. `uses` only grows, by one conditional UPDATE per redemption
-- (`uses < max_uses`, not revoked, not expired), so concurrent redemptions cannot exceed
-- `max_uses`. `policy` is the KeyPolicy (JSON, NULL: none) each key minted from it gets.
-- Times are unix ms. Keep in step with ../postgres/0014_invites.sql.
CREATE TABLE invites (
    id          TEXT PRIMARY KEY,
    pool_id     TEXT NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    label       TEXT,
    code_hash   TEXT NOT NULL UNIQUE,
    policy      TEXT,
    max_uses    BIGINT NOT NULL,
    uses        BIGINT NOT NULL DEFAULT 0,
    expires_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX invites_pool ON invites (pool_id);

-- One row per redemption: who (the name they gave) got which key, and the policy the key was
-- minted with (`key_policy`, JSON, NULL: none), for the key's policy to be applied from.
CREATE TABLE invite_redemptions (
    invite_id   TEXT NOT NULL REFERENCES invites(id) ON DELETE CASCADE,
    key_id      TEXT NOT NULL REFERENCES pool_keys(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    key_policy  TEXT,
    redeemed_at BIGINT NOT NULL,
    PRIMARY KEY (invite_id, key_id)
);
CREATE INDEX invite_redemptions_key ON invite_redemptions (key_id);
