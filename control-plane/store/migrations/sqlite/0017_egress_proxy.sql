-- Issue 16: an account's own egress proxy (`http://host:port`), through which the control
-- plane's calls for it (refresh, quota polls, warm-up) tunnel. NULL: direct. Keep in step with
-- ../postgres/0017_egress_proxy.sql.
ALTER TABLE accounts ADD COLUMN egress_proxy TEXT;
