-- The audit log says how each action ended and where it came from, and which pools it concerns
-- (what tenant isolation filters on); pools can be archived (issue 11). Keep in step with
-- ../sqlite/0007_audit_scope.sql (the comments there explain the columns).
ALTER TABLE audit_log ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok';
ALTER TABLE audit_log ADD COLUMN client TEXT;

CREATE TABLE audit_pools (
    audit_id BIGINT NOT NULL REFERENCES audit_log(id) ON DELETE CASCADE,
    pool     TEXT NOT NULL,
    PRIMARY KEY (pool, audit_id)
);
CREATE INDEX audit_pools_audit ON audit_pools (audit_id);

INSERT INTO audit_pools (audit_id, pool)
    SELECT id, detail::jsonb ->> 'pool' FROM audit_log
     WHERE detail IS NOT NULL AND jsonb_typeof(detail::jsonb -> 'pool') = 'string'
    UNION
    SELECT id, detail::jsonb ->> 'name' FROM audit_log
     WHERE action LIKE 'pool.%' AND detail IS NOT NULL
       AND jsonb_typeof(detail::jsonb -> 'name') = 'string'
    UNION
    SELECT a.id, j.value FROM audit_log a
      CROSS JOIN LATERAL jsonb_array_elements_text(
          CASE WHEN a.detail IS NOT NULL AND jsonb_typeof(a.detail::jsonb -> 'pools') = 'array'
               THEN a.detail::jsonb -> 'pools' ELSE '[]'::jsonb END) AS j(value)
    UNION
    SELECT a.id, p.name FROM audit_log a
      JOIN pool_memberships m ON m.account_id = a.target
      JOIN pools p ON p.id = m.pool_id
     WHERE a.action LIKE 'account.%';

CREATE INDEX audit_log_outcome ON audit_log (outcome, id);

ALTER TABLE pools ADD COLUMN archived_at BIGINT;
