-- Routing settings (SQLite). Keep in step with ../postgres/0003_routing.sql.
-- Everything in proto RoutingSettings that 0001 did not store yet, per pool and as an optional
-- per-key override, plus the route facts of reported outcomes. NULL means "the default" (the
-- snapshot sends 0, which the filter reads as its default), so existing rows keep behaving as
-- before. Existing pools keep their strategy: new pools get 'quota_first' from create_pool,
-- which names the strategy explicitly (SQLite cannot change a column default in place, so
-- pools.strategy keeps its old DEFAULT in both backends; nothing relies on it).

-- primary_first's owner. SET NULL: removing the account falls back to "first by priority".
ALTER TABLE pools ADD COLUMN primary_account_id TEXT REFERENCES accounts(id) ON DELETE SET NULL;
-- Skip an account whose 5-hour / weekly window is at or above this percentage (0 < x <= 100).
ALTER TABLE pools ADD COLUMN primary_threshold_percent REAL;
ALTER TABLE pools ADD COLUMN secondary_threshold_percent REAL;
-- Circuit breaker: consecutive failures that open it, and how long it stays open (ms).
ALTER TABLE pools ADD COLUMN circuit_failures BIGINT;
ALTER TABLE pools ADD COLUMN circuit_open_ms BIGINT;
-- Longest cooldown after a 429 without a reset time (ms).
ALTER TABLE pools ADD COLUMN cooldown_max_ms BIGINT;

-- A key either inherits its pool's routing or carries a complete copy of its own ('custom'),
-- taken from the pool when it became custom: the filter uses an override instead of the
-- pool's settings, never merged with them. The columns are NULL while the key inherits.
ALTER TABLE pool_keys ADD COLUMN routing_mode TEXT NOT NULL DEFAULT 'inherit';
ALTER TABLE pool_keys ADD COLUMN strategy TEXT;
ALTER TABLE pool_keys ADD COLUMN max_attempts BIGINT;
ALTER TABLE pool_keys ADD COLUMN explain_routes BIGINT;
ALTER TABLE pool_keys ADD COLUMN primary_account_id TEXT REFERENCES accounts(id) ON DELETE SET NULL;
ALTER TABLE pool_keys ADD COLUMN primary_threshold_percent REAL;
ALTER TABLE pool_keys ADD COLUMN secondary_threshold_percent REAL;
ALTER TABLE pool_keys ADD COLUMN circuit_failures BIGINT;
ALTER TABLE pool_keys ADD COLUMN circuit_open_ms BIGINT;
ALTER TABLE pool_keys ADD COLUMN cooldown_max_ms BIGINT;

-- Route facts from the data path (never the prompt): the strategy that ranked the request and
-- why the attempt's account was chosen (affinity, turn_state, strategy, probe, failover).
ALTER TABLE outcomes ADD COLUMN strategy TEXT;
ALTER TABLE outcomes ADD COLUMN route_reason TEXT;
