//! Codex credentials for tests: unsigned JWTs, Codex CLI-shaped logins and their `auth.json`,
//! and importing one with the CLI.
//!
//! Rules: tokens are fixtures (far-future expiry, empty signatures; the control plane never
//! verifies signatures); an auth.json is written into the test's own directory and imported
//! with `codexmesh account import`, as a user would.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{json, Value};

use crate::cli::Cli;

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A JWT with `claims` and an empty signature: the control plane never verifies signatures, but
/// its decoder wants a header naming a real algorithm (ChatGPT's is RS256).
pub fn jwt(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(claims)
    )
}

/// Codex CLI-shaped tokens for one ChatGPT account.
pub struct Login {
    pub account_id: String,
    pub email: String,
    pub plan: String,
    pub exp: i64,
    pub access_token: String,
    pub refresh_token: String,
    pub id_token: String,
}

impl Login {
    pub fn new(account_id: &str, email: &str, plan: &str, nonce: &str) -> Self {
        let ns = "https://api.openai.com/auth";
        let exp = 2_000_000_000;
        let id_token = jwt(&json!({
            "email": email,
            "exp": exp,
            ns: {"chatgpt_account_id": account_id, "chatgpt_plan_type": plan, "chatgpt_user_id": "user-x"}
        }));
        let access_token = jwt(&json!({
            "exp": exp,
            "nonce": nonce,
            ns: {"chatgpt_account_id": account_id, "chatgpt_plan_type": plan}
        }));
        Self {
            account_id: account_id.to_owned(),
            email: email.to_owned(),
            plan: plan.to_owned(),
            exp,
            access_token,
            refresh_token: format!("rt_{nonce}_secret"),
            id_token,
        }
    }

    /// The Codex CLI's `auth.json` for this login.
    pub fn auth_json(&self) -> String {
        json!({
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "account_id": self.account_id
            },
            "last_refresh": "2026-05-01T10:00:00.000000Z"
        })
        .to_string()
    }
}

/// Writes `contents` as `dir/file_name`; returns the path.
pub fn write_auth_json(dir: &Path, file_name: &str, contents: &str) -> Result<PathBuf> {
    let path = dir.join(file_name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes `contents` as `dir/file_name` and imports it into `pool` (as `label` when given) with
/// `codexmesh account import`; returns the command's JSON answer.
pub fn import_auth_json(
    cli: &impl Cli,
    dir: &Path,
    file_name: &str,
    contents: &str,
    pool: &str,
    label: Option<&str>,
) -> Result<Value> {
    let path = write_auth_json(dir, file_name, contents)?;
    let path = path.to_string_lossy().into_owned();
    let mut args = vec!["account", "import", path.as_str(), "--pool", pool];
    if let Some(label) = label {
        args.extend(["--name", label]);
    }
    cli.ok_json(&args)
}
