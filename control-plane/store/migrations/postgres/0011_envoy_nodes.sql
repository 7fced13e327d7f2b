-- Snapshot ACK/NACK per Envoy (issue 13), as xDS: the last snapshot version each node accepted
-- and the last it rejected, with the filter's reason and the pool the reason concerns. Written
-- only when a verdict changes; rows of nodes not seen for 7 days are forgotten (store
-- envoys.rs), so the table stays small. Times are unix ms. Keep in step with
-- ../sqlite/0011_envoy_nodes.sql.
CREATE TABLE envoy_nodes (
    node_id        TEXT PRIMARY KEY,
    acked_version  BIGINT,
    acked_at       BIGINT,
    nacked_version BIGINT,
    nacked_at      BIGINT,
    nack_detail    TEXT,
    nack_pool_id   TEXT,
    seen_at        BIGINT NOT NULL
);
CREATE INDEX envoy_nodes_seen ON envoy_nodes (seen_at);
