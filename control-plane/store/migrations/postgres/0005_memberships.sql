-- Pool memberships (PostgreSQL). Keep in step with ../sqlite/0005_memberships.sql.
--
-- One account row per login (one credential lineage, one refresher); the pools it serves are
-- its memberships, each with that pool's priority and weight. Before this, importing a login
-- into two pools made two account rows sharing one refresh-token lineage: each refreshed on its
-- own and the second replayed a consumed refresh token, which revokes the login upstream.
--
-- A login is (chatgpt_account_id, chatgpt_user_id); rows imported from an auth.json without a
-- user id claim have NULL there, and NULL matches only NULL (COALESCE to ''): a row with a user
-- id and one without are not merged, because one ChatGPT workspace has several users.
--
-- Left in place but no longer the source of truth (kept like the SQLite schema, which cannot
-- drop them without rebuilding the table): `accounts.priority` and `accounts.weight` (unused;
-- the membership's are used) and `accounts.pool_id`, which keeps naming the pool the login was
-- first imported into. The old UNIQUE (pool_id, chatgpt_account_id) is dropped here (SQLite
-- keeps it, see there).

CREATE TABLE pool_memberships (
    pool_id    TEXT NOT NULL REFERENCES pools(id),
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    priority   BIGINT NOT NULL DEFAULT 0,
    weight     BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (pool_id, account_id)
);
CREATE INDEX pool_memberships_account ON pool_memberships (account_id);

-- Which row each existing row becomes: per login, the one with the newest tokens (highest
-- token_revision, then tokens_updated_at, then id). Kept as a record of the merge (rows that
-- stay themselves are not listed).
CREATE TABLE account_merges (
    merged_id TEXT PRIMARY KEY,
    into_id   TEXT NOT NULL,
    merged_at BIGINT NOT NULL
);
INSERT INTO account_merges (merged_id, into_id, merged_at)
SELECT a.id,
       (SELECT b.id FROM accounts b
         WHERE b.chatgpt_account_id = a.chatgpt_account_id
           AND COALESCE(b.chatgpt_user_id, '') = COALESCE(a.chatgpt_user_id, '')
         ORDER BY b.token_revision DESC, b.tokens_updated_at DESC, b.id DESC LIMIT 1),
       CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)
  FROM accounts a;

-- Every old row's pool becomes a membership of the surviving row, with that row's priority
-- and weight (the old UNIQUE (pool_id, chatgpt_account_id) rules out two in one pool).
INSERT INTO pool_memberships (pool_id, account_id, priority, weight, created_at)
SELECT a.pool_id, m.into_id, a.priority, a.weight, a.created_at
  FROM accounts a JOIN account_merges m ON m.merged_id = a.id;

DELETE FROM account_merges WHERE merged_id = into_id;

-- References to a merged row now name the survivor: primary_first owners, and the request log
-- (outcomes keep being readable under the account they were served by).
UPDATE pools SET primary_account_id =
       (SELECT into_id FROM account_merges WHERE merged_id = pools.primary_account_id)
 WHERE primary_account_id IN (SELECT merged_id FROM account_merges);
UPDATE pool_keys SET primary_account_id =
       (SELECT into_id FROM account_merges WHERE merged_id = pool_keys.primary_account_id)
 WHERE primary_account_id IN (SELECT merged_id FROM account_merges);
UPDATE outcomes SET account_id =
       (SELECT into_id FROM account_merges WHERE merged_id = outcomes.account_id)
 WHERE account_id IN (SELECT merged_id FROM account_merges);

-- All-time counters add up. Quota evidence of merged rows is dropped with them (the survivor
-- keeps its own; the poller and the next answers renew it).
INSERT INTO account_stats (account_id, requests, successes, fallbacks_served, updated_at)
SELECT DISTINCT m.into_id, 0, 0, 0, 0
  FROM account_merges m
 WHERE NOT EXISTS (SELECT 1 FROM account_stats s WHERE s.account_id = m.into_id)
   AND EXISTS (SELECT 1 FROM account_stats s WHERE s.account_id = m.merged_id);
UPDATE account_stats SET
       requests = requests + (SELECT COALESCE(SUM(s.requests), 0) FROM account_stats s
                                JOIN account_merges m ON m.merged_id = s.account_id
                               WHERE m.into_id = account_stats.account_id),
       successes = successes + (SELECT COALESCE(SUM(s.successes), 0) FROM account_stats s
                                  JOIN account_merges m ON m.merged_id = s.account_id
                                 WHERE m.into_id = account_stats.account_id),
       fallbacks_served = fallbacks_served + (SELECT COALESCE(SUM(s.fallbacks_served), 0)
                                                FROM account_stats s
                                                JOIN account_merges m ON m.merged_id = s.account_id
                                               WHERE m.into_id = account_stats.account_id),
       updated_at = GREATEST(updated_at, (SELECT COALESCE(MAX(s.updated_at), 0) FROM account_stats s
                                       JOIN account_merges m ON m.merged_id = s.account_id
                                      WHERE m.into_id = account_stats.account_id))
 WHERE account_id IN (SELECT into_id FROM account_merges);

-- The merged rows go (their quota and counter rows cascade; nothing else refers to them now).
DELETE FROM accounts WHERE id IN (SELECT merged_id FROM account_merges);

ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_pool_id_chatgpt_account_id_key;

-- One row per login from now on.
CREATE UNIQUE INDEX accounts_login ON accounts (chatgpt_account_id, COALESCE(chatgpt_user_id, ''));
