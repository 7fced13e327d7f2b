//! Invites through the use cases (issue 15), on SQLite and on PostgreSQL (a throwaway cluster of
//! the test kit, or `CODEXMESH_TEST_POSTGRES_URL`): the code is stored only as its hash;
//! concurrent redemptions never exceed the use count; expired, revoked and used-up invites are
//! refused with their reason and write nothing; a wrong code counts as a failed attempt of the
//! client address (the sign-in throttle) and locks it after enough; every step is audited
//! without the code or the key; a tenant sees only its pools' invites.

mod support;

use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::invites::{self, InviteRequest};
use codexmesh_engine::ops::{ErrorKind, Ops, OpsError};
use codexmesh_model::invites::{invite_code_hash_hex, InviteStatus};
use codexmesh_model::operators::{Access, Principal, Role};
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::util;
use codexmesh_store::{Actor, AuditFilter, Store};
use support::pg;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const HOUR_MS: i64 = 3_600_000;

fn ops_for(
    dir: &tempfile::TempDir,
    url: &str,
    store: Store,
) -> Result<Ops, Box<dyn std::error::Error>> {
    let flags = SettingsFlags {
        store: Some(url.to_owned()),
        data_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    Ok(Ops::with_store(settings, Actor::new("cli:tester"), store))
}

/// The same store, as an anonymous person redeeming from `client`.
fn redeemer(ops: &Ops, client: &str) -> Ops {
    ops.acting_as(Access::shell("nobody"), Some(client.to_owned()))
}

fn kind<T>(r: &Result<T, OpsError>) -> Option<ErrorKind> {
    r.as_ref().err().map(OpsError::kind)
}

fn policy() -> KeyPolicy {
    KeyPolicy {
        allowed_models: vec!["gpt-5*".into()],
        requests_per_minute: Some(30),
        ..KeyPolicy::default()
    }
}

async fn exercise(url: &str, tag: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(url).await?;
    let ops = ops_for(&dir, url, store.clone())?;
    let pool = format!("friends-{tag}");
    let other = format!("other-{tag}");
    store.create_pool(&Actor::new("t"), &pool).await?;
    store.create_pool(&Actor::new("t"), &other).await?;

    // Bad input is refused before anything is written, naming the field.
    for (request, field) in [
        (
            InviteRequest {
                pool: &pool,
                label: None,
                max_uses: 0,
                expires_in_ms: HOUR_MS,
                policy: KeyPolicy::default(),
            },
            "max_uses",
        ),
        (
            InviteRequest {
                pool: &pool,
                label: None,
                max_uses: 1,
                expires_in_ms: 1,
                policy: KeyPolicy::default(),
            },
            "expires_in",
        ),
        (
            InviteRequest {
                pool: &pool,
                label: None,
                max_uses: 1,
                expires_in_ms: HOUR_MS,
                policy: KeyPolicy {
                    requests_per_minute: Some(0),
                    ..KeyPolicy::default()
                },
            },
            "policy",
        ),
    ] {
        let r = invites::create(&ops, &request).await;
        assert_eq!(kind(&r), Some(ErrorKind::Invalid));
        assert_eq!(
            r.err()
                .and_then(|e| e.field().map(str::to_owned))
                .as_deref(),
            Some(field)
        );
    }
    assert!(invites::list(&ops, Some(&pool)).await?.value.is_empty());

    // Created: the code is shown once, stored only as its hash, never in the audit log.
    let issued = invites::create(
        &ops,
        &InviteRequest {
            pool: &pool,
            label: Some("for the team"),
            max_uses: 3,
            expires_in_ms: HOUR_MS,
            policy: policy(),
        },
    )
    .await?
    .value;
    let code = issued.code.expose().to_owned();
    assert!(code.starts_with("cmi_") && code.len() == 44, "{code}");
    assert!(
        issued.link.ends_with(&format!("/invite#code={code}")),
        "{}",
        issued.link
    );
    let (stored_hash, stored_policy): (String, Option<String>) =
        sqlx::query_as("SELECT code_hash, policy FROM invites WHERE id = $1")
            .bind(issued.invite.id.clone())
            .fetch_one(store.sql_pool())
            .await?;
    assert_eq!(stored_hash, invite_code_hash_hex(&code));
    assert!(!stored_hash.contains(&code[4..]));
    assert!(stored_policy.is_some_and(|p| p.contains("gpt-5*")));
    assert_eq!(issued.invite.status, InviteStatus::Active);
    assert_eq!(issued.invite.uses_left, 3);
    assert_eq!(issued.invite.policy, policy());

    // Ten people at once, three uses: exactly three keys.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let ops = redeemer(&ops, &format!("10.9.0.{i}"));
        let code = code.clone();
        tasks.push(tokio::spawn(async move {
            invites::redeem(&ops, &code, &format!("friend {i}")).await
        }));
    }
    let mut minted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await? {
            Ok(o) => minted.push(o.value),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
                assert!(e.to_string().contains("used as often as it allows"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((minted.len(), refused), (3, 7));
    let listed = invites::get(&ops, &issued.invite.id).await?.value;
    assert_eq!(
        (listed.uses, listed.uses_left, listed.status),
        (3, 0, InviteStatus::UsedUp)
    );
    let keys: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pool_keys k JOIN pools p ON p.id = k.pool_id WHERE p.name = $1",
    )
    .bind(pool.clone())
    .fetch_one(store.sql_pool())
    .await?;
    assert_eq!(keys, 3, "a refused redemption minted a key");
    for r in &minted {
        assert!(r.secret.expose().starts_with("cmk_"));
        assert_eq!(r.key.pool, pool);
        assert!(r.key.label.starts_with("friend "));
        // The key is usable: its hash is the one stored, and it carries the invite's policy.
        assert_eq!(
            store.find_key(&r.key.id).await?.key_hash_hex,
            r.secret.hash_hex()
        );
        assert_eq!(store.invite_key_policy(&r.key.id).await?, Some(policy()));
        assert_eq!(
            r.key.policy,
            Some(policy()),
            "the minted key enforces the invite's policy"
        );
        assert_eq!(store.find_key(&r.key.id).await?.policy, Some(policy()));
    }

    // Audited: create, each redemption (name and key id), never the code or a key.
    let audit = store
        .audit_entries(&AuditFilter {
            action: Some("invite.".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await?;
    let text = format!("{audit:?}");
    assert!(!text.contains(&code[4..]), "the code reached the audit log");
    for r in &minted {
        assert!(
            !text.contains(&r.secret.expose()[4..]),
            "a key reached the audit log"
        );
        let row = audit
            .iter()
            .find(|a| {
                a.action == "invite.redeem"
                    && a.outcome == "ok"
                    && a.detail.as_deref().is_some_and(|d| d.contains(&r.key.id))
            })
            .ok_or("no redemption row")?;
        assert_eq!(row.actor, format!("invite:{}", r.key.label));
        assert!(row
            .client
            .as_deref()
            .is_some_and(|c| c.starts_with("10.9.0.")));
    }
    assert!(audit
        .iter()
        .any(|a| a.action == "invite.create" && a.outcome == "ok"));
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.action == "invite.redeem" && a.outcome == "conflict")
            .count(),
        7
    );

    // Expired: refused with that reason, nothing written.
    let expiring = invites::create(
        &ops,
        &InviteRequest {
            pool: &pool,
            label: None,
            max_uses: 5,
            expires_in_ms: HOUR_MS,
            policy: KeyPolicy::default(),
        },
    )
    .await?
    .value;
    sqlx::query("UPDATE invites SET expires_at = $1 WHERE id = $2")
        .bind(util::now_ms() - 1)
        .bind(expiring.invite.id.clone())
        .execute(store.sql_pool())
        .await?;
    let r = invites::redeem(&redeemer(&ops, "10.9.1.1"), expiring.code.expose(), "late").await;
    assert_eq!(kind(&r), Some(ErrorKind::Conflict));
    assert!(r
        .err()
        .is_some_and(|e| e.to_string().contains("has expired")));
    assert_eq!(
        invites::get(&ops, &expiring.invite.id).await?.value.status,
        InviteStatus::Expired
    );

    // Revoked: refused; revoking twice changes nothing the second time.
    let revocable = invites::create(
        &ops,
        &InviteRequest {
            pool: &pool,
            label: None,
            max_uses: 5,
            expires_in_ms: HOUR_MS,
            policy: KeyPolicy::default(),
        },
    )
    .await?
    .value;
    assert!(
        invites::revoke(&ops, &revocable.invite.id)
            .await?
            .value
            .changed
    );
    assert!(
        !invites::revoke(&ops, &revocable.invite.id)
            .await?
            .value
            .changed
    );
    let r = invites::redeem(&redeemer(&ops, "10.9.1.2"), revocable.code.expose(), "nope").await;
    assert!(r
        .err()
        .is_some_and(|e| e.kind() == ErrorKind::Conflict && e.to_string().contains("was revoked")));
    let uses: i64 = sqlx::query_scalar("SELECT uses FROM invites WHERE id = $1")
        .bind(revocable.invite.id.clone())
        .fetch_one(store.sql_pool())
        .await?;
    assert_eq!(uses, 0);

    // A bad name is invalid, naming `name`, and uses nothing.
    let r = invites::redeem(&redeemer(&ops, "10.9.1.3"), revocable.code.expose(), " ").await;
    assert_eq!(
        r.err()
            .and_then(|e| e.field().map(str::to_owned))
            .as_deref(),
        Some("name")
    );

    // Wrong codes count against the client address: the 20th locks it, then even a right code
    // is refused unheard (429), while another address is unaffected.
    let fresh = invites::create(
        &ops,
        &InviteRequest {
            pool: &pool,
            label: None,
            max_uses: 5,
            expires_in_ms: HOUR_MS,
            policy: KeyPolicy::default(),
        },
    )
    .await?
    .value;
    let guesser = redeemer(&ops, "10.9.2.2");
    for i in 0..20 {
        let guess = format!("cmi_{}", util::random_alnum(40)?);
        let r = invites::redeem(
            &guesser,
            if i % 2 == 0 { &guess } else { "not-a-code" },
            "guess",
        )
        .await;
        assert_eq!(kind(&r), Some(ErrorKind::NotFound), "guess {i}");
    }
    let r = invites::redeem(&guesser, fresh.code.expose(), "guess").await;
    assert_eq!(kind(&r), Some(ErrorKind::RateLimited));
    assert!(
        invites::redeem(&redeemer(&ops, "10.9.2.3"), fresh.code.expose(), "honest")
            .await
            .is_ok()
    );

    // A tenant sees and revokes only its pools' invites.
    let admin = ops.acting_as(
        Access {
            principal: Principal::Operator {
                id: "op_x".into(),
                name: "x".into(),
            },
            role: Role::Admin,
            pools: vec![other.clone()],
        },
        Some("10.0.0.1".into()),
    );
    assert!(invites::list(&admin, None).await?.value.is_empty());
    let r = invites::revoke(&admin, &fresh.invite.id).await;
    assert_eq!(kind(&r), Some(ErrorKind::NotFound));
    let r = invites::create(
        &admin,
        &InviteRequest {
            pool: &pool,
            label: None,
            max_uses: 1,
            expires_in_ms: HOUR_MS,
            policy: KeyPolicy::default(),
        },
    )
    .await;
    assert_eq!(kind(&r), Some(ErrorKind::NotFound));
    let own = invites::create(
        &admin,
        &InviteRequest {
            pool: &other,
            label: None,
            max_uses: 1,
            expires_in_ms: HOUR_MS,
            policy: KeyPolicy::default(),
        },
    )
    .await?
    .value;
    let seen: Vec<String> = invites::list(&admin, None)
        .await?
        .value
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(seen, [own.invite.id]);
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn sqlite_invites_are_redeemed_at_most_their_use_count() -> TestResult {
    let dir = tempfile::tempdir()?;
    exercise(&format!("sqlite://{}/cm.db", dir.path().display()), "lite").await
}

/// Skipped (with a note from the kit) only when no PostgreSQL binaries exist.
#[tokio::test]
async fn postgres_invites_are_redeemed_at_most_their_use_count() -> TestResult {
    let temp;
    let url = match std::env::var("CODEXMESH_TEST_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) => {
            temp = match pg::TempPostgres::start().map_err(|e| e.to_string())? {
                Some(t) => t,
                None => return Ok(()),
            };
            temp.url.clone()
        }
    };
    let tag = util::random_alnum(8)?.to_ascii_lowercase();
    exercise(&url, &tag).await
}
