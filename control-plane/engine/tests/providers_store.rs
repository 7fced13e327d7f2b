//! Claude and Gemini accounts in the store: an import writes provider, credential kind and
//! project; one login stays one account (same file again, or into another pool); an older file
//! does not overwrite newer stored tokens; a rotated Claude file is matched by its label; the
//! snapshot reads them back. Against SQLite always, and against a throwaway PostgreSQL when its
//! binaries exist.

use serde_json::json;

mod support;

use codexmesh_model::credential_files as creds_file;
use codexmesh_model::credentials::{unsigned_jwt, LoginCredentials};
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::*;
use support::pg;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn claude(
    refresh: &str,
    expires_at_ms: i64,
) -> Result<LoginCredentials, Box<dyn std::error::Error>> {
    Ok(creds_file::parse_file(
        json!({"claudeAiOauth": {
            "accessToken": format!("sk-ant-oat01-{refresh}"), "refreshToken": refresh,
            "expiresAt": expires_at_ms, "scopes": ["user:inference"], "subscriptionType": "max"
        }})
        .to_string()
        .as_bytes(),
        None,
    )?)
}

fn gemini(
    sub: &str,
    project: Option<&str>,
) -> Result<LoginCredentials, Box<dyn std::error::Error>> {
    let mut doc = json!({
        "access_token": format!("ya29.{sub}"), "refresh_token": format!("1//{sub}"),
        "token_type": "Bearer", "expiry_date": 1_900_000_000_000_i64,
        "id_token": unsigned_jwt(&json!({"sub": sub, "email": format!("{sub}@example.com")})),
    });
    if let Some(p) = project {
        doc["project_id"] = json!(p);
    }
    Ok(creds_file::parse_file(doc.to_string().as_bytes(), None)?)
}

async fn exercise(store: &Store, tag: &str, key: &MasterKey) -> TestResult {
    let actor = Actor::new("test");
    let (pa, pb) = (format!("pa-{tag}"), format!("pb-{tag}"));
    store.create_pool(&actor, &pa).await?;
    store.create_pool(&actor, &pb).await?;

    // Claude subscription login: provider and kind written, plan from subscriptionType.
    let c1 = claude(&format!("rt-{tag}-1"), 1_900_000_000_000)?;
    let first = store.import_account(&actor, &pa, None, &c1, key).await?;
    let a = &first.account;
    assert_eq!(
        (a.provider, a.credential_kind, a.project_id.as_deref()),
        (Provider::Claude, CredentialKind::Oauth, None)
    );
    assert_eq!(a.plan.as_deref(), Some("max"));
    assert!(a.chatgpt_account_id.starts_with("claude:"));
    let claude_id = a.id.clone();

    // The same file into another pool: one account, a second membership.
    let again = store.import_account(&actor, &pb, None, &c1, key).await?;
    assert_eq!(
        (again.account.id.as_str(), again.action, again.joined_pool),
        (claude_id.as_str(), ImportAction::Updated, true)
    );

    // A rotated file (new refresh token, later expiry) is a new fingerprint: matched by label.
    let label = a.label.clone();
    let c2 = claude(&format!("rt-{tag}-2"), 1_950_000_000_000)?;
    let rotated = store
        .import_account(&actor, &pa, Some(&label), &c2, key)
        .await?;
    assert_eq!(rotated.account.id, claude_id);
    assert_eq!(rotated.tokens, TokenUpdate::Replaced);
    // The first file again (expires earlier than what is stored): the newer tokens stay.
    let stale = store.import_account(&actor, &pa, None, &c1, key).await?;
    assert_eq!(
        (stale.account.id.as_str(), stale.tokens),
        (claude_id.as_str(), TokenUpdate::KeptNewer)
    );
    let secrets = store.account_secrets(&claude_id, key).await?;
    assert_eq!(secrets.refresh_token, format!("rt-{tag}-2"));

    // A Claude API key: its own account, api_key kind, no refresh token or expiry.
    let k = creds_file::parse_file(format!("sk-ant-api03-{tag}\n").as_bytes(), None)?;
    let keyed = store.import_account(&actor, &pa, None, &k, key).await?;
    assert_ne!(keyed.account.id, claude_id);
    assert_eq!(
        (keyed.account.provider, keyed.account.credential_kind),
        (Provider::Claude, CredentialKind::ApiKey)
    );
    assert_eq!(keyed.account.access_token_expires_at_ms, None);
    let secrets = store.account_secrets(&keyed.account.id, key).await?;
    assert_eq!(
        (
            secrets.access_token.as_str(),
            secrets.refresh_token.as_str()
        ),
        (format!("sk-ant-api03-{tag}").as_str(), "")
    );

    // Gemini: the login is the id token's subject; the project is written, and a re-import
    // without one keeps it.
    let sub = format!("sub-{tag}");
    let g = store
        .import_account(&actor, &pb, None, &gemini(&sub, Some("proj-a"))?, key)
        .await?;
    assert_eq!(
        (g.account.provider, g.account.project_id.as_deref()),
        (Provider::Gemini, Some("proj-a"))
    );
    assert_eq!(
        g.account.email.as_deref(),
        Some(format!("{sub}@example.com").as_str())
    );
    assert_eq!(g.account.chatgpt_account_id, sub);
    let g2 = store
        .import_account(&actor, &pb, None, &gemini(&sub, None)?, key)
        .await?;
    assert_eq!(
        (g2.account.id.as_str(), g2.account.project_id.as_deref()),
        (g.account.id.as_str(), Some("proj-a"))
    );

    // Listing and the snapshot read them back.
    let listed = store.list_accounts(Some(&pb)).await?;
    let providers: Vec<(Provider, CredentialKind)> = listed
        .iter()
        .map(|a| (a.provider, a.credential_kind))
        .collect();
    assert!(providers.contains(&(Provider::Gemini, CredentialKind::Oauth)));
    assert!(providers.contains(&(Provider::Claude, CredentialKind::Oauth)));
    let snap = store.snapshot_data().await?;
    let gem = snap
        .accounts
        .iter()
        .find(|a| a.account.id == g.account.id)
        .ok_or("gemini account missing from the snapshot")?;
    assert_eq!(gem.account.provider, Provider::Gemini);
    assert_eq!(gem.account.project_id.as_deref(), Some("proj-a"));
    let opened = key.open_string(&g.account.id, "access_token", &gem.sealed_access_token)?;
    assert_eq!(opened, format!("ya29.{sub}"));
    let api = snap
        .accounts
        .iter()
        .find(|a| a.account.id == keyed.account.id)
        .ok_or("api-key account missing from the snapshot")?;
    assert_eq!(api.account.credential_kind, CredentialKind::ApiKey);
    Ok(())
}

#[tokio::test]
async fn sqlite_provider_accounts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}/cm.db", dir.path().display())).await?;
    exercise(&store, "lite", &MasterKey::generate()?).await
}

#[tokio::test]
async fn postgres_provider_accounts() -> TestResult {
    if let Ok(url) = std::env::var("CODEXMESH_TEST_POSTGRES_URL") {
        let store = Store::open(&url).await?;
        let tag = codexmesh_model::util::random_alnum(8)?.to_ascii_lowercase();
        exercise(&store, &tag, &MasterKey::from_bytes(&[7u8; 32])?).await?;
        store.close().await;
        return Ok(());
    }
    let Some(temp) = pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let store = Store::open(&temp.url).await?;
    exercise(&store, "pg", &MasterKey::generate()?).await?;
    store.close().await;
    Ok(())
}
