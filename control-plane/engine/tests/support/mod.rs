//! Shared by the store scenario tests: a Codex login to import and a throwaway PostgreSQL.
#![allow(dead_code)]

use codexmesh_model::credentials::{self as authjson, CodexCredentials};
use serde_json::json;

/// The throwaway PostgreSQL of the test kit (not every test file uses it).
#[allow(unused_imports)]
pub use codexmesh_test_kit::pg;

pub fn creds(
    account: &str,
    email: &str,
    access: &str,
) -> Result<CodexCredentials, authjson::AuthJsonError> {
    let ns = "https://api.openai.com/auth";
    let id_token = authjson::unsigned_jwt(&json!({
        "email": email,
        ns: {"chatgpt_account_id": account, "chatgpt_plan_type": "plus", "chatgpt_user_id": "u1"}
    }));
    let access_token = authjson::unsigned_jwt(&json!({"exp": 2_000_000_000, "n": access}));
    authjson::parse(
        json!({
            "auth_mode": "chatgpt",
            "tokens": {"id_token": id_token, "access_token": access_token,
                       "refresh_token": format!("rt-{access}"), "account_id": account}
        })
        .to_string()
        .as_bytes(),
    )
}
