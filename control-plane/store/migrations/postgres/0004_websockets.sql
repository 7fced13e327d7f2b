-- Whether WebSocket upgrades of the Responses endpoint are pooled (NULL or 1) or refused with
-- 426 so clients fall back to HTTP SSE (0), per pool and in a key's own routing. Keep the two
-- backends' files in step.
ALTER TABLE pools ADD COLUMN websockets BIGINT;
ALTER TABLE pool_keys ADD COLUMN websockets BIGINT;
