-- TOTP replay protection (issue 11): the last time step (unix time / 30) whose code an operator
-- used, at sign-in or to confirm its second factor. A code is accepted only for a later step, so
-- a code seen once (or an older one) never works again. NULL: none used since enrolling. Keep in
-- step with ../postgres/0008_totp_step.sql.
ALTER TABLE operators ADD COLUMN totp_last_step BIGINT;
