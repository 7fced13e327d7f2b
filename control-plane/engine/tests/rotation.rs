//! Master key rotation (issue 13) through the use case, on SQLite and on a throwaway PostgreSQL
//! cluster when its binaries are installed: a rotation stopped at every point (after the key
//! file is written, after the store records the next key, after each re-sealed row, after the
//! switch) leaves every account's tokens and every TOTP secret readable with the keys on disk,
//! and running it again finishes; a token written meanwhile with the old key is never lost;
//! afterwards the old key alone opens nothing.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::operators;
use codexmesh_engine::ops::secrets::{self, Checkpoint, RotateOptions};
use codexmesh_engine::ops::Ops;
use codexmesh_model::operators::Role;
use codexmesh_model::records::RefreshedTokens;
use codexmesh_store::crypto::{Keyring, Keys, MasterKey};
use codexmesh_store::keyfile::{read_key_file, KeySource};
use codexmesh_store::{Actor, SealedKind, Store, StoreError, TOTP_FIELD};
use support::{creds, pg};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

const ACCOUNTS: usize = 4;
const PW: &str = "correct horse battery";

fn ops_in(dir: &Path, store: &str) -> Res<Ops> {
    let flags = SettingsFlags {
        store: Some(store.to_owned()),
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    Ok(Ops::new(settings, Actor::new("cli:tester")))
}

/// What the store must still hold: each account's three tokens, the operator's TOTP secret.
struct Expected {
    tokens: Vec<(String, [String; 3])>,
    operator_id: String,
    totp_secret: Vec<u8>,
    /// An alert webhook's id and signing secret (issue 15).
    webhook: (String, String),
}

async fn fill(ops: &Ops) -> Res<Expected> {
    let store = ops.store().await?;
    store.create_pool(ops.actor(), "team").await?;
    let keys = ops.settings().master_keys()?;
    let mut tokens = Vec::new();
    for n in 0..ACCOUNTS {
        let c = creds(&format!("chatgpt-{n}"), "x@example.com", &format!("a{n}"))?;
        let r = store
            .import_account(ops.actor(), "team", Some(&format!("acc{n}")), &c, &keys)
            .await?;
        tokens.push((r.account.id, [c.access_token, c.refresh_token, c.id_token]));
    }
    let op = operators::create(ops, "root", Role::Owner, &[], Some(PW))
        .await?
        .value;
    let enrolled = operators::totp_enroll(ops, "root").await?.value;
    let totp_secret = totp_rs::Secret::Encoded(enrolled.secret_base32.clone()).to_bytes()?;
    let hook = codexmesh_engine::ops::alerts::add_webhook(ops, "hook", "http://127.0.0.1:9/", None)
        .await?
        .value;
    Ok(Expected {
        tokens,
        operator_id: op.id,
        totp_secret,
        webhook: (hook.webhook.id, hook.secret),
    })
}

/// Every secret opens with the keys in the key file now (read afresh, as a restarted process
/// would) and is what was written.
async fn assert_readable(
    store: &Store,
    key_file: &Path,
    expected: &Expected,
    at: &str,
) -> TestResult {
    let ring = read_key_file(key_file)?;
    for (id, [access, refresh, id_token]) in &expected.tokens {
        let s = store.account_secrets(id, &ring).await;
        let s = s.map_err(|e| format!("{at}: account {id}: {e}"))?;
        assert_eq!(&s.access_token, access, "{at}");
        assert_eq!(&s.refresh_token, refresh, "{at}");
        assert_eq!(&s.id_token, id_token, "{at}");
    }
    let sealed = store
        .operator_credentials(&expected.operator_id)
        .await?
        .totp_secret_sealed
        .ok_or("no TOTP secret")?;
    let secret = Keys::open(&ring, &expected.operator_id, TOTP_FIELD, &sealed)
        .map_err(|e| format!("{at}: TOTP: {e}"))?;
    assert_eq!(secret, expected.totp_secret, "{at}");
    let (hook_id, hook_secret) = &expected.webhook;
    let (_, sealed) = store.webhook_target(hook_id).await?;
    let secret = Keys::open(
        &ring,
        hook_id,
        codexmesh_store::WEBHOOK_SECRET_FIELD,
        &sealed,
    )
    .map_err(|e| format!("{at}: webhook: {e}"))?;
    assert_eq!(secret, hook_secret.as_bytes(), "{at}");
    Ok(())
}

/// Runs a rotation that stops at the `stop`-th checkpoint matching `when` (1-based); returns
/// whether it stopped.
async fn rotate_stopping(
    ops: &Ops,
    when: impl Fn(Checkpoint) -> bool + Send + 'static,
) -> Res<bool> {
    let stopped = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&stopped);
    let options = RotateOptions {
        checkpoint: Some(Box::new(move |at| {
            if when(at) {
                *flag
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
                false
            } else {
                true
            }
        })),
    };
    let result = secrets::rotate_master_key(ops, options).await;
    let stopped = *stopped
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match result {
        Ok(_) => Ok(stopped),
        Err(_) if stopped => Ok(true),
        Err(e) => Err(e.into()),
    }
}

fn blobs_of(row_tokens: &codexmesh_store::AccountSecrets) -> [&str; 3] {
    [
        &row_tokens.access_token,
        &row_tokens.refresh_token,
        &row_tokens.id_token,
    ]
}

async fn exercise(dir: &Path, url: &str) -> TestResult {
    let ops = ops_in(dir, url)?;
    let key_file: PathBuf = ops.settings().master_key_path();
    let mut expected = fill(&ops).await?;
    let store = ops.store().await?.clone();
    let v1 = read_key_file(&key_file)?.newest().clone();
    assert_eq!(v1.version(), 1);
    let session = operators::sign_in(&ops, "root", PW, None).await;
    // TOTP is only enrolled (not confirmed): a password alone signs in.
    let session = session?.value.token;
    assert_readable(&store, &key_file, &expected, "before").await?;

    // Every interruption point, one per rotation: v1 → v2 stopped after the file is written,
    // v2 → v3 after the store recorded v3, then after the k-th re-sealed row, after the switch.
    let rows = u64::try_from(ACCOUNTS + 2)?;
    let mut points: Vec<Checkpoint> = vec![Checkpoint::FileWritten, Checkpoint::Recorded];
    points.extend((1..=rows).map(Checkpoint::Resealed));
    points.push(Checkpoint::Switched);
    for (version, point) in (1u32..).zip(points) {
        let at = format!("v{version}→v{} stopped at {point:?}", version + 1);
        assert!(rotate_stopping(&ops, move |c| c == point).await?, "{at}");
        assert_readable(&store, &key_file, &expected, &at).await?;
        let status = secrets::status(&ops).await?.value;
        assert!(status.keyring_holds_current, "{at}");
        if point == Checkpoint::Switched {
            assert_eq!(status.current_version, Some(version + 1), "{at}");
            assert_eq!(status.rotating_to, None, "{at}");
        } else {
            assert_eq!(status.current_version, Some(version), "{at}");
            if point != Checkpoint::FileWritten {
                assert_eq!(status.rotating_to, Some(version + 1), "{at}");
            }
        }
        if version == 1 && point == Checkpoint::FileWritten {
            // A session signed under v1 still verifies while v1 is held.
            operators::verify_session(&ops, session.expose()).await?;
        }
        // Running it again finishes the job.
        let done = secrets::rotate_master_key(&ops, RotateOptions::default())
            .await?
            .value;
        assert_eq!(done.to_version, version + 1, "{at}");
        assert!(done.old_keys_removed, "{at}");
        assert_readable(&store, &key_file, &expected, &format!("{at}, finished")).await?;
        let status = secrets::status(&ops).await?.value;
        assert_eq!(status.current_version, Some(version + 1), "{at}");
        assert_eq!(status.rotating_to, None, "{at}");
        assert_eq!(status.keyring_versions, vec![version + 1], "{at}");
        assert_eq!(store.count_sealed_not_under(version + 1).await?, 0, "{at}");
    }

    // The v1 key alone opens nothing now, and a v1 session is over; a new sign-in works.
    for (id, _) in &expected.tokens {
        assert!(store.account_secrets(id, &v1).await.is_err());
    }
    assert!(operators::verify_session(&ops, session.expose())
        .await
        .is_err());
    let again = operators::sign_in(&ops, "root", PW, None).await?.value;
    operators::verify_session(&ops, again.token.expose()).await?;

    // A refresh that writes tokens with the old key mid-rotation (a server that has not read
    // the new key file yet) is not lost: the rotation re-seals it, in a later pass.
    let old = read_key_file(&key_file)?.newest().clone();
    assert!(rotate_stopping(&ops, |c| c == Checkpoint::Resealed(2)).await?);
    let stale_server = KeySource::from(Keyring::from(old.clone()));
    for (n, (id, tokens)) in expected.tokens.iter_mut().enumerate() {
        let fresh = RefreshedTokens {
            access_token: format!("refreshed-access-{n}"),
            refresh_token: format!("refreshed-refresh-{n}"),
            id_token: tokens[2].clone(),
            access_token_expires_at_ms: Some(4_000_000_000_000),
            plan: None,
            email: None,
        };
        store
            .store_refreshed_tokens(&Actor::new("refresher"), id, &fresh, &stale_server)
            .await?;
        tokens[0] = fresh.access_token;
        tokens[1] = fresh.refresh_token;
    }
    assert_readable(&store, &key_file, &expected, "old-key writes mid-rotation").await?;
    let done = secrets::rotate_master_key(&ops, RotateOptions::default())
        .await?
        .value;
    assert_eq!(done.to_version, old.version() + 1);
    assert_readable(&store, &key_file, &expected, "after old-key writes").await?;
    // After the switch the store refuses to seal with the retired key.
    let refused = store
        .store_refreshed_tokens(
            &Actor::new("refresher"),
            &expected.tokens[0].0,
            &RefreshedTokens {
                access_token: "late".into(),
                refresh_token: "late".into(),
                id_token: "late".into(),
                access_token_expires_at_ms: None,
                plan: None,
                email: None,
            },
            &stale_server,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::MasterKeyMismatch)),
        "{refused:?}"
    );

    // Re-sealing is compare-and-swap: a row written after it was read is left alone.
    assert!(rotate_stopping(&ops, |c| c == Checkpoint::Recorded).await?);
    let ring = read_key_file(&key_file)?;
    let target = ring.newest().clone();
    let rows = store
        .sealed_rows_not_under(SealedKind::Account, &target, "", 100)
        .await?;
    assert_eq!(rows.len(), ACCOUNTS);
    let first = &rows[0];
    let fresh = RefreshedTokens {
        access_token: "raced-access".into(),
        refresh_token: "raced-refresh".into(),
        id_token: "raced-id".into(),
        access_token_expires_at_ms: Some(4_000_000_000_000),
        plan: None,
        email: None,
    };
    store
        .store_refreshed_tokens(&Actor::new("refresher"), &first.id, &fresh, &ring)
        .await?;
    assert!(!store.reseal_row(&ring, &target, first).await?);
    let s = store.account_secrets(&first.id, &ring).await?;
    assert_eq!(blobs_of(&s), ["raced-access", "raced-refresh", "raced-id"]);
    // The writer already sealed under the next key (the newest the store accepts).
    assert!(store.reseal_row(&ring, &target, &rows[1]).await?);
    for (id, tokens) in expected.tokens.iter_mut() {
        if *id == first.id {
            *tokens = [
                "raced-access".into(),
                "raced-refresh".into(),
                "raced-id".into(),
            ];
        }
    }
    let done = secrets::rotate_master_key(&ops, RotateOptions::default())
        .await?
        .value;
    assert_eq!(done.resealed, u64::try_from(ACCOUNTS)?, "{done:?}");
    assert_readable(&store, &key_file, &expected, "after the race").await?;

    // Done: running it once more starts a new rotation (a new key), it does not fail.
    let status = secrets::status(&ops).await?.value;
    assert_eq!(status.rotating_to, None);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn rotation_survives_every_interruption_on_sqlite() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/cm.db", dir.path().display());
    exercise(dir.path(), &url).await
}

/// On a private throwaway cluster (never `CODEXMESH_TEST_POSTGRES_URL`: rotating its key would
/// change the key other tests' stores use); skipped only when no PostgreSQL binaries exist.
#[tokio::test]
async fn rotation_survives_every_interruption_on_postgres() -> TestResult {
    let Some(temp) = pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    exercise(dir.path(), &temp.url).await
}

/// Keys given in the environment are never written: without a newer key there the command
/// explains what to do; with one (`v2:NEW,v1:OLD`) it rotates, and says to remove the old key.
#[tokio::test]
async fn keys_from_the_environment_are_adopted_not_written() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/cm.db", dir.path().display());
    let old = MasterKey::generate()?;
    let with_env = |value: String| -> Res<Ops> {
        let flags = SettingsFlags {
            store: Some(url.clone()),
            data_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let env = move |name: &str| (name == "CODEXMESH_MASTER_KEY").then(|| value.clone());
        Ok(Ops::new(
            Settings::resolve(&flags, &env)?,
            Actor::new("cli:tester"),
        ))
    };
    let ops = with_env(old.to_base64())?;
    let expected = fill(&ops).await?;
    let err = secrets::rotate_master_key(&ops, RotateOptions::default())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("CODEXMESH_MASTER_KEY"), "{err}");
    assert!(err.contains("--print-new"), "{err}");
    assert!(!dir.path().join("master.key").exists());
    let entry = secrets::new_key_entry(&ops).await?.value;
    assert_eq!(entry.version, 2);
    assert!(entry.entry.starts_with("v2:"));

    let ops = with_env(format!("{},v1:{}", entry.entry, old.to_base64()))?;
    let done = secrets::rotate_master_key(&ops, RotateOptions::default()).await?;
    assert_eq!(done.value.to_version, 2);
    assert!(!done.value.old_keys_removed);
    assert!(done.notices.iter().any(|n| n.code == "remove_old_keys"));
    let new_only = Keyring::parse(&entry.entry)?;
    let store = ops.store().await?;
    for (id, [access, _, _]) in &expected.tokens {
        assert_eq!(
            &store.account_secrets(id, &new_only).await?.access_token,
            access
        );
        assert!(store.account_secrets(id, &old).await.is_err());
    }
    // Run again with both still given: nothing to re-seal, the same advice.
    let again = secrets::rotate_master_key(&ops, RotateOptions::default()).await?;
    assert_eq!(again.value.passes, 0);
    assert!(again.notices.iter().any(|n| n.code == "remove_old_keys"));
    // A process given only the old key is refused up front.
    let stale = with_env(old.to_base64())?;
    let refused = stale.store().await?.verify_master_key(&old).await;
    assert!(matches!(refused, Err(StoreError::MasterKeyMismatch)));
    Ok(())
}
