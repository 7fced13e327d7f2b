-- Issue 15: account warm-up. Per pool an opt-in schedule: a UTC time of day (minute of the day,
-- 0..1439), the weekdays it runs on (bit 0 = Monday … bit 6 = Sunday; 127 = every day), and
-- whether it is on. `last_slot_at` is the scheduled instant (unix ms) last claimed: a slot is
-- claimed by compare-and-set, so it runs once across replicas. Keep in step with
-- ../postgres/0016_warmup.sql.
CREATE TABLE pool_warmups (
    pool_id      TEXT PRIMARY KEY REFERENCES pools(id) ON DELETE CASCADE,
    minute_of_day BIGINT NOT NULL,
    weekdays     BIGINT NOT NULL DEFAULT 127,
    enabled      BIGINT NOT NULL DEFAULT 1,
    updated_at   BIGINT NOT NULL,
    last_slot_at BIGINT
);
