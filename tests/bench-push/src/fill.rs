//! Writing synthetic pools, keys, accounts and quota rows straight into a store through the
//! control plane's library (one transaction per row, as the CLI would, without a process per
//! row). Shared by `push`'s setup and `seed`.

use anyhow::{Context, Result};
use codexmesh_model::credentials::CodexCredentials;
use codexmesh_proto::v1 as pb;
use codexmesh_store::{Actor, QuotaRecord, Store, WindowEvidence};

use crate::gen::{self, Login, Rng};

/// The credentials an auth.json of this login would carry.
pub fn credentials(login: Login) -> CodexCredentials {
    CodexCredentials {
        provider: codexmesh_model::records::Provider::Codex,
        credential_kind: codexmesh_model::records::CredentialKind::Oauth,
        project_id: None,
        id_token: login.id_token,
        access_token: login.access_token,
        refresh_token: login.refresh_token,
        chatgpt_account_id: login.chatgpt_account_id,
        chatgpt_user_id: Some(login.user_id),
        email: Some(login.email),
        plan: Some(login.plan.to_owned()),
        access_token_expires_at_ms: Some(login.exp_unix * 1000),
    }
}

/// Creates a key for `pool` (only its hash is stored, as `key create` does); returns the raw key.
pub async fn create_key(store: &Store, actor: &Actor, pool: &str, rng: &mut Rng) -> Result<String> {
    let raw = gen::raw_key(rng);
    let hex: String = codexmesh_model::keys::hash_key(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    store
        .create_key(actor, pool, None, false, &hex)
        .await
        .with_context(|| format!("create a key for {pool}"))?;
    Ok(raw)
}

/// A polled quota row per account (random windows), without bumping the store's revision: the
/// rows land before anything subscribes.
pub async fn write_quota_rows(
    store: &Store,
    account_ids: &[String],
    rng: &mut Rng,
    now_unix: i64,
    now_ms: i64,
) -> Result<()> {
    for id in account_ids {
        let q = gen::quota(rng, now_unix);
        let window = |w: Option<pb::QuotaWindow>| {
            w.map(|w| WindowEvidence {
                used_percent: w.used_percent,
                window_minutes: i64::from(w.window_minutes),
                resets_at_unix: w.resets_at_unix,
                observed_at_ms: now_ms,
                source: "poll".to_owned(),
            })
        };
        let record = QuotaRecord {
            primary: window(q.primary),
            secondary: window(q.secondary),
            credits: None,
            plan: None,
            plan_observed_at_ms: 0,
            version: 0,
        };
        store
            .write_quota(id, None, &record, false)
            .await
            .context("write quota")?;
    }
    Ok(())
}
