-- The audit log says how each action ended and where it came from, and which pools it concerns
-- (what tenant isolation filters on); pools can be archived (issue 11). Keep in step with
-- ../postgres/0007_audit_scope.sql.
--
-- outcome: 'ok' for a change that was made (written in the change's transaction), else the
-- refusal's kind (not_found, invalid, conflict, forbidden, unauthenticated, rate_limited,
-- upstream, unavailable, internal), written after the fact with revision 0.
ALTER TABLE audit_log ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
-- The client's IP address for admin API requests; NULL for the shell and background work.
ALTER TABLE audit_log ADD COLUMN client TEXT;

-- The pools an audit row concerns, by name (a row outlives its pool). Rows without any are
-- shown only to owners (and to the actor itself).
CREATE TABLE audit_pools (
    audit_id BIGINT NOT NULL REFERENCES audit_log(id) ON DELETE CASCADE,
    pool     TEXT NOT NULL,
    PRIMARY KEY (pool, audit_id)
);
CREATE INDEX audit_pools_audit ON audit_pools (audit_id);

-- Older rows: the pool named in the detail (`pool`, a pool row's `name`, a `pools` list) and,
-- for account rows, the pools the account is in now.
INSERT INTO audit_pools (audit_id, pool)
    SELECT id, json_extract(detail, '$.pool') FROM audit_log
     WHERE json_valid(detail) AND json_type(detail, '$.pool') = 'text'
    UNION
    SELECT id, json_extract(detail, '$.name') FROM audit_log
     WHERE action LIKE 'pool.%' AND json_valid(detail) AND json_type(detail, '$.name') = 'text'
    UNION
    SELECT a.id, j.value FROM audit_log a, json_each(a.detail, '$.pools') j
     WHERE json_valid(a.detail) AND json_type(a.detail, '$.pools') = 'array' AND j.type = 'text'
    UNION
    SELECT a.id, p.name FROM audit_log a
      JOIN pool_memberships m ON m.account_id = a.target
      JOIN pools p ON p.id = m.pool_id
     WHERE a.action LIKE 'account.%';

CREATE INDEX audit_log_outcome ON audit_log (outcome, id);

-- An archived pool keeps its rows but leaves the snapshot: its keys stop working.
ALTER TABLE pools ADD COLUMN archived_at BIGINT;
