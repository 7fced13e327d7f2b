-- Issue 14: accounts of several providers. `provider` is codex, claude or gemini (every account
-- made before is a Codex one); `credential_kind` oauth or api_key (a Claude console key, stored
-- sealed in sealed_access_token and never refreshed); `project_id` the Google Cloud project a
-- Gemini account's Code Assist bills. chatgpt_account_id keeps the provider's id of the login.
-- Keep the two backends' files in step.
ALTER TABLE accounts ADD COLUMN provider TEXT NOT NULL DEFAULT 'codex';
ALTER TABLE accounts ADD COLUMN credential_kind TEXT NOT NULL DEFAULT 'oauth';
ALTER TABLE accounts ADD COLUMN project_id TEXT;
