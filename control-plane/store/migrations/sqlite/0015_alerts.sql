-- Issue 15: alerts and the pool forecast. Keep in step with ../postgres/0015_alerts.sql.
--
-- alert_webhooks: where alerts go. The signing secret (whsec_…) is sealed under the master key
-- (store::crypto, the webhook id as associated data) and shown only once, at creation; a
-- webhook with a pool only hears alerts about that pool. last_* record the latest delivery
-- attempt (status 0: no HTTP answer).
CREATE TABLE alert_webhooks (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    url              TEXT NOT NULL,
    pool_id          TEXT REFERENCES pools(id) ON DELETE CASCADE,
    sealed_secret    BLOB NOT NULL,
    created_at       BIGINT NOT NULL,
    last_delivery_at BIGINT,
    last_status      BIGINT,
    last_error       TEXT
);

-- alert_episodes: one row per time a condition held (kind + subject: an account id, a pool
-- name, an Envoy node id), open while closed_at is NULL. At most one open episode per
-- condition (the partial unique index), so two evaluators cannot open the same one twice.
CREATE TABLE alert_episodes (
    id        TEXT PRIMARY KEY,
    kind      TEXT NOT NULL,
    subject   TEXT NOT NULL,
    pool      TEXT,
    severity  TEXT NOT NULL,
    message   TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE UNIQUE INDEX alert_episodes_open ON alert_episodes (kind, subject) WHERE closed_at IS NULL;
CREATE INDEX alert_episodes_opened ON alert_episodes (opened_at);

-- alert_deliveries: the outbox. Opening an episode queues one `firing` delivery per matching
-- webhook, closing it one `resolved`, in the same transaction; the sender retries each with
-- backoff until done_at is set (delivered, or given up after the last attempt).
CREATE TABLE alert_deliveries (
    episode_id      TEXT NOT NULL REFERENCES alert_episodes(id) ON DELETE CASCADE,
    webhook_id      TEXT NOT NULL REFERENCES alert_webhooks(id) ON DELETE CASCADE,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    done_at         BIGINT,
    last_status     BIGINT,
    PRIMARY KEY (episode_id, webhook_id, state)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (done_at, next_attempt_at);

-- pool_usage_samples: each pool's mean used % per window over its active accounts, sampled by
-- the alert evaluator (at most one a minute per pool, kept 8 days): the burn rate the forecast
-- projects from.
CREATE TABLE pool_usage_samples (
    pool_id        TEXT NOT NULL REFERENCES pools(id) ON DELETE CASCADE,
    at_ms          BIGINT NOT NULL,
    primary_used   REAL,
    secondary_used REAL,
    PRIMARY KEY (pool_id, at_ms)
);
