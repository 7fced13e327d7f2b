//! Operators, roles, sessions, API tokens and the audit log through the use cases (issue 11),
//! on SQLite, and on a throwaway PostgreSQL cluster when its binaries are installed. Each use
//! case acts for the principal its `Ops` carries: the shell's (`Ops::new`), or a verified
//! session's or API token's (`Ops::acting_as`), as the admin API will.

mod support;

use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::operators::{self, Session};
use codexmesh_engine::ops::{ErrorKind, Ops, OpsError};
use codexmesh_model::operators::{Access, Role};
use codexmesh_model::util::now_ms;
use codexmesh_store::{Actor, AuditEntry, AuditFilter};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PW: &str = "correct horse battery";

/// Use cases on `store` (SQLite in `dir` when None) with `dir` as the data dir, as the shell.
fn ops_in(dir: &tempfile::TempDir, store: Option<String>) -> Res<Ops> {
    ops_with(dir, store, false)
}

fn ops_with(dir: &tempfile::TempDir, store: Option<String>, require_totp: bool) -> Res<Ops> {
    let flags = SettingsFlags {
        store: Some(store.unwrap_or_else(|| format!("sqlite://{}/cm.db", dir.path().display()))),
        data_dir: Some(dir.path().to_owned()),
        require_totp: Some(require_totp),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    Ok(Ops::new(settings, Actor::new("cli:tester")))
}

/// The same store, from client address `client` (a sign-in request).
fn from(ops: &Ops, client: &str) -> Ops {
    ops.acting_as(Access::shell("tester"), Some(client.to_owned()))
}

/// The same store, acting for `access` from 10.0.0.1 (an authenticated request).
fn acting(ops: &Ops, access: &Access) -> Ops {
    ops.acting_as(access.clone(), Some("10.0.0.1".into()))
}

fn kind<T: std::fmt::Debug>(r: Result<T, OpsError>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind())
}

/// Signs `name` in from client "c" and verifies the token.
async fn session(ops: &Ops, name: &str, password: &str) -> Res<Session> {
    let signed = operators::sign_in(&from(ops, "c"), name, password, None)
        .await?
        .value;
    Ok(operators::verify_session(ops, signed.token.expose()).await?)
}

fn totp_of(secret_base32: &str) -> Res<totp_rs::TOTP> {
    let secret = totp_rs::Secret::Encoded(secret_base32.to_owned()).to_bytes()?;
    Ok(totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret,
    )?)
}

/// The code of the time step `steps` after the current one.
fn code_in(totp: &totp_rs::TOTP, steps: i64) -> Res<String> {
    let at = now_ms() / 1000 + 30 * steps;
    Ok(totp.generate(u64::try_from(at)?))
}

async fn audit_rows(ops: &Ops, action: &str) -> Res<Vec<AuditEntry>> {
    Ok(operators::audit(
        ops,
        AuditFilter {
            action: Some(action.into()),
            limit: 100,
            ..Default::default()
        },
    )
    .await?
    .value)
}

async fn bootstrap_secret_makes_one_owner_once(ops: &Ops) -> TestResult {
    let first = operators::bootstrap_secret(ops).await?.value;
    let second = operators::bootstrap_secret(ops).await?.value;
    // Both are valid (replicas starting together each print one) until one makes the owner.
    let owner = operators::bootstrap_owner(ops, second.secret.expose(), "root", PW)
        .await?
        .value;
    assert_eq!(owner.role, Role::Owner);
    assert_eq!(
        kind(operators::bootstrap_owner(ops, first.secret.expose(), "root3", PW).await),
        Some(ErrorKind::NotFound),
        "an owner exists: no secret works any more"
    );
    // Valid once, and no new secret once an owner exists.
    assert_eq!(
        kind(operators::bootstrap_owner(ops, second.secret.expose(), "root2", PW).await),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(operators::bootstrap_secret(ops).await),
        Some(ErrorKind::Conflict)
    );
    // Each attempt is audited, refused ones too, without the secret or the password.
    let rows = audit_rows(ops, "operator.bootstrap").await?;
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|e| (e.actor.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("bootstrap:root2", "not_found"),
            ("bootstrap:root3", "not_found"),
            ("bootstrap:root", "ok"),
        ]
    );
    let text = serde_json::to_string(&audit_rows(ops, "operator.").await?)?;
    for secret in [first.secret.expose(), second.secret.expose(), PW] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("\"outcome\":\"conflict\""), "{text}");
    Ok(())
}

async fn sessions_are_revoked_by_password_role_and_sign_out(ops: &Ops) -> TestResult {
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    operators::create(ops, "root", Role::Owner, &[], Some(PW)).await?;
    let alice = operators::create(ops, "alice", Role::Admin, &["p1".into()], Some(PW))
        .await?
        .value;
    assert_eq!(alice.pools, vec!["p1".to_owned()]);

    let signed = operators::sign_in(&from(ops, "10.0.0.1"), "alice", PW, None)
        .await?
        .value;
    assert!(!signed.totp_setup_required);
    let s = operators::verify_session(ops, signed.token.expose()).await?;
    assert!(!s.totp_setup_only);
    assert_eq!(s.access.role, Role::Admin);
    assert_eq!(s.operator.name, "alice");
    assert_eq!(s.expires_at_ms, signed.expires_at_ms);
    assert!(s.access.may_change_pool("p1") && !s.access.sees_pool("p2"));

    // Its own password, through its own session: every session ends.
    operators::set_password(&acting(ops, &s.access), "alice", "another long password").await?;
    assert_eq!(
        kind(operators::verify_session(ops, signed.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    let signed = operators::sign_in(ops, "alice", "another long password", None)
        .await?
        .value;
    operators::set_role(ops, "alice", Role::Viewer).await?;
    assert_eq!(
        kind(operators::verify_session(ops, signed.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    let signed = operators::sign_in(ops, "alice", "another long password", None)
        .await?
        .value;
    let s = operators::verify_session(ops, signed.token.expose()).await?;
    operators::sign_out(&acting(ops, &s.access)).await?;
    assert_eq!(
        kind(operators::verify_session(ops, signed.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    let out = audit_rows(ops, "session.sign_out").await?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].actor, "operator:alice");
    assert_eq!(out[0].client.as_deref(), Some("10.0.0.1"));
    // Only an operator's session signs out.
    assert_eq!(
        kind(operators::sign_out(ops).await),
        Some(ErrorKind::Invalid)
    );
    // A tampered token is refused.
    let mut forged = signed.token.expose().to_owned();
    forged.push('x');
    assert_eq!(
        kind(operators::verify_session(ops, &forged).await),
        Some(ErrorKind::Unauthenticated)
    );
    // A token signed with another master key (another store) is refused.
    let other_dir = tempfile::tempdir()?;
    let other = ops_in(&other_dir, None)?;
    operators::create(&other, "alice", Role::Owner, &[], Some(PW)).await?;
    let foreign = operators::sign_in(&other, "alice", PW, None).await?.value;
    assert_eq!(
        kind(operators::verify_session(ops, foreign.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    Ok(())
}

async fn sign_in_failures_lock_the_operator_and_the_address(ops: &Ops) -> TestResult {
    operators::create(ops, "bob", Role::Owner, &[], Some(PW)).await?;
    for _ in 0..operators::OPERATOR_THROTTLE.max_failures {
        assert_eq!(
            kind(operators::sign_in(&from(ops, "10.0.0.2"), "bob", "wrong password!!", None).await),
            Some(ErrorKind::Unauthenticated)
        );
    }
    // Locked: even the right password is refused, before it is checked.
    assert_eq!(
        kind(operators::sign_in(&from(ops, "10.0.0.3"), "bob", PW, None).await),
        Some(ErrorKind::RateLimited)
    );
    // Unknown names count against the address.
    let nine = from(ops, "10.0.0.9");
    for _ in 0..operators::CLIENT_THROTTLE.max_failures {
        let _ = operators::sign_in(&nine, "nobody", "wrong password!!", None).await;
    }
    assert_eq!(
        kind(operators::sign_in(&nine, "nobody", PW, None).await),
        Some(ErrorKind::RateLimited)
    );
    // A password change clears the operator's lock.
    operators::set_password(ops, "bob", "a new long password").await?;
    operators::sign_in(&from(ops, "10.0.0.3"), "bob", "a new long password", None).await?;
    Ok(())
}

async fn sign_ins_are_audited_without_secrets(ops: &Ops) -> TestResult {
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    operators::create(ops, "carol", Role::Viewer, &["p1".into()], Some(PW)).await?;
    let here = from(ops, "192.0.2.7");
    let signed = operators::sign_in(&here, "carol", PW, None).await?.value;
    assert_eq!(
        kind(operators::sign_in(&here, "carol", "not her password", None).await),
        Some(ErrorKind::Unauthenticated)
    );
    assert_eq!(
        kind(operators::sign_in(&here, "nobody", PW, Some("123456")).await),
        Some(ErrorKind::Unauthenticated)
    );
    // The password typed into the name field is not repeated.
    assert_eq!(
        kind(operators::sign_in(&here, PW, PW, None).await),
        Some(ErrorKind::Unauthenticated)
    );
    for _ in 0..operators::OPERATOR_THROTTLE.max_failures {
        let _ = operators::sign_in(&here, "carol", "not her password", None).await;
    }
    assert_eq!(
        kind(operators::sign_in(&here, "carol", PW, None).await),
        Some(ErrorKind::RateLimited)
    );
    let rows = audit_rows(ops, "session.sign_in").await?;
    let seen: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .rev()
        .take(4)
        .map(|e| (e.actor.as_str(), e.outcome.as_str(), e.client.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("operator:carol", "ok", Some("192.0.2.7")),
            ("operator:carol", "unauthenticated", Some("192.0.2.7")),
            ("operator:nobody", "unauthenticated", Some("192.0.2.7")),
            (
                "operator:(invalid name)",
                "unauthenticated",
                Some("192.0.2.7")
            ),
        ]
    );
    assert_eq!(rows[0].outcome, "rate_limited");
    assert_eq!(rows[0].target.as_deref(), Some(signed.operator.id.as_str()));
    // Rows about carol concern her pools: the pool's admins read them.
    assert_eq!(rows[0].pools, vec!["p1".to_owned()]);
    assert_eq!(rows.last().map(|e| e.revision), Some(0));
    let text = serde_json::to_string(&rows)?;
    for secret in [PW, "not her password", "123456", signed.token.expose()] {
        assert!(!text.contains(secret), "{secret} in the audit log: {text}");
    }
    Ok(())
}

async fn roles_limit_what_an_operator_may_do(ops: &Ops) -> TestResult {
    let store = ops.store().await?;
    store.create_pool(ops.actor(), "p1").await?;
    store.create_pool(ops.actor(), "p2").await?;
    operators::create(ops, "root", Role::Owner, &[], Some(PW)).await?;
    operators::create(ops, "adm", Role::Admin, &["p1".into()], Some(PW)).await?;
    operators::create(ops, "other", Role::Viewer, &["p2".into()], Some(PW)).await?;
    let adm = acting(ops, &session(ops, "adm", PW).await?.access);
    // An admin creates viewers in its pools; a pool it does not see does not exist for it.
    operators::create(&adm, "v1", Role::Viewer, &["p1".into()], Some(PW)).await?;
    assert_eq!(
        kind(operators::create(&adm, "v2", Role::Viewer, &["p2".into()], None).await),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(operators::create(&adm, "o2", Role::Owner, &[], None).await),
        Some(ErrorKind::Forbidden)
    );
    // It does not see the owner or the p2 viewer; it cannot promote itself.
    let seen: Vec<String> = operators::list(&adm)
        .await?
        .value
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(seen, vec!["adm".to_owned(), "v1".to_owned()]);
    assert_eq!(
        kind(operators::set_disabled(&adm, "other", true).await),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(operators::set_role(&adm, "adm", Role::Owner).await),
        Some(ErrorKind::Forbidden)
    );
    // Refusals are audited, with their outcome and the admin as the actor.
    let refused: Vec<(String, String)> = audit_rows(ops, "operator.")
        .await?
        .into_iter()
        .filter(|e| e.outcome != "ok")
        .map(|e| (e.action, e.outcome))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("operator.set_role".to_owned(), "forbidden".to_owned()),
            ("operator.disable".to_owned(), "not_found".to_owned()),
            ("operator.create".to_owned(), "forbidden".to_owned()),
            ("operator.create".to_owned(), "not_found".to_owned()),
        ]
    );
    let mine = operators::audit(
        &adm,
        AuditFilter {
            outcome: Some("forbidden".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await?
    .value;
    assert!(mine.iter().all(|e| e.actor == "operator:adm"), "{mine:?}");
    assert_eq!(mine.len(), 2);
    // A viewer changes nothing.
    let v1 = session(ops, "v1", PW).await?.access;
    assert!(!v1.may_change_pool("p1") && v1.sees_pool("p1"));
    assert_eq!(
        kind(operators::issue_token(&acting(ops, &v1), "t", Role::Viewer, &["p1".into()]).await),
        Some(ErrorKind::Forbidden)
    );
    assert_eq!(
        audit_rows(ops, "token.create").await?[0].outcome,
        "forbidden"
    );
    // The last owner stays.
    assert_eq!(
        kind(operators::set_disabled(ops, "root", true).await),
        Some(ErrorKind::Conflict)
    );
    assert_eq!(
        kind(operators::set_role(ops, "root", Role::Admin).await),
        Some(ErrorKind::Conflict)
    );
    // Disabling signs out.
    let t = operators::sign_in(ops, "v1", PW, None).await?.value.token;
    operators::set_disabled(ops, "v1", true).await?;
    assert_eq!(
        kind(operators::verify_session(ops, t.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    assert_eq!(
        kind(operators::sign_in(ops, "v1", PW, None).await),
        Some(ErrorKind::Unauthenticated)
    );
    Ok(())
}

/// Two changes that would each leave one owner, at once: exactly one is made, whatever the
/// interleaving (the store counts owners inside each change's transaction).
async fn the_last_owner_stays_under_concurrent_changes(ops: &Ops) -> TestResult {
    operators::create(ops, "o1", Role::Owner, &[], Some(PW)).await?;
    operators::create(ops, "o2", Role::Owner, &[], Some(PW)).await?;
    let owners = || async {
        Ok::<_, OpsError>(
            operators::list(ops)
                .await?
                .value
                .into_iter()
                .filter(|o| o.role == Role::Owner && !o.disabled)
                .map(|o| o.name)
                .collect::<Vec<_>>(),
        )
    };
    // Two demotions, then two disables, then one of each.
    for round in 0..3 {
        let (a, b) = match round {
            0 => tokio::join!(
                operators::set_role(ops, "o1", Role::Admin),
                operators::set_role(ops, "o2", Role::Admin)
            ),
            1 => tokio::join!(
                operators::set_disabled(ops, "o1", true),
                operators::set_disabled(ops, "o2", true)
            ),
            _ => tokio::join!(
                operators::set_role(ops, "o1", Role::Viewer),
                operators::set_disabled(ops, "o2", true)
            ),
        };
        let kinds = [kind(a), kind(b)];
        assert!(
            kinds.contains(&None) && kinds.contains(&Some(ErrorKind::Conflict)),
            "round {round}: {kinds:?}"
        );
        let left = owners().await?;
        assert_eq!(left.len(), 1, "round {round}: {left:?}");
        // Back to two enabled owners for the next round.
        for name in ["o1", "o2"] {
            operators::set_disabled(ops, name, false).await?;
            operators::set_role(ops, name, Role::Owner).await?;
        }
        assert_eq!(owners().await?.len(), 2);
    }
    let conflicts = audit_rows(ops, "operator.")
        .await?
        .into_iter()
        .filter(|e| e.outcome == "conflict")
        .count();
    assert_eq!(conflicts, 3);
    Ok(())
}

/// Failed sign-ins from many addresses at once (a dashboard's sign-in page under a burst) are
/// each refused and counted: none fails on the store being busy.
async fn concurrent_failed_sign_ins_are_all_counted(ops: &Ops) -> TestResult {
    // Opened (and migrated) once, before the tasks share it.
    ops.store().await?;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let from_i = from(ops, &format!("10.9.0.{i}"));
        tasks.push(tokio::spawn(async move {
            let mut kinds = Vec::new();
            for attempt in 0..2 {
                let name = format!("nobody-{i}-{attempt}");
                let result = operators::sign_in(&from_i, &name, "wrong", None).await;
                kinds.push(result.err().map(|e| (e.kind(), e.to_string())));
            }
            kinds
        }));
    }
    for task in tasks {
        for k in task.await? {
            assert_eq!(
                k.as_ref().map(|(kind, _)| *kind),
                Some(ErrorKind::Unauthenticated),
                "{k:?}"
            );
        }
    }
    let store = ops.store().await?;
    for i in 0..16 {
        // Two failures each, none lost.
        let failures: i64 =
            sqlx::query_scalar("SELECT failures FROM signin_failures WHERE client = $1")
                .bind(format!("10.9.0.{i}"))
                .fetch_one(store.sql_pool())
                .await?;
        assert_eq!(failures, 2, "10.9.0.{i}");
    }
    Ok(())
}

async fn api_tokens_are_shown_once_and_revocable(ops: &Ops) -> TestResult {
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    let issued = operators::issue_token(ops, "ci", Role::Admin, &["p1".into()])
        .await?
        .value;
    assert!(issued.secret.expose().starts_with("cma_"));
    assert!(!format!("{issued:?}").contains(issued.secret.expose()));
    let access = operators::verify_token(ops, issued.secret.expose()).await?;
    assert_eq!(access.role, Role::Admin);
    assert_eq!(access.principal.actor(), "token:ci");
    assert!(access.may_change_pool("p1") && !access.sees_pool("p2"));
    let listed = operators::list_tokens(ops).await?.value;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at_ms.is_some());
    // A token sees the tokens within its pools; an unseen one is not found.
    let as_token = acting(ops, &access);
    assert_eq!(operators::list_tokens(&as_token).await?.value.len(), 1);
    assert_eq!(
        kind(operators::revoke_token(&as_token, "nope").await),
        Some(ErrorKind::NotFound)
    );
    assert!(operators::revoke_token(ops, "ci").await?.value.changed);
    assert_eq!(
        kind(operators::verify_token(ops, issued.secret.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    Ok(())
}

async fn the_audit_log_records_changes_without_secrets(ops: &Ops) -> TestResult {
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    ops.store().await?.create_pool(ops.actor(), "p_2").await?;
    operators::create(ops, "adm", Role::Admin, &["p1".into()], Some(PW)).await?;
    let issued = operators::issue_token(ops, "ci", Role::Viewer, &["p1".into()])
        .await?
        .value;
    operators::set_password(ops, "adm", "another long password").await?;
    let page = |f: AuditFilter| async move { operators::audit(ops, f).await.map(|o| o.value) };
    let all = page(AuditFilter {
        limit: 100,
        ..Default::default()
    })
    .await?;
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "operator.set_password",
            "token.create",
            "operator.create",
            "pool.create",
            "pool.create"
        ]
    );
    assert!(all.iter().all(|e| e.actor == "cli:tester"));
    // A change to an operator concerns its pools.
    assert_eq!(all[0].pools, vec!["p1".to_owned()]);
    let text = serde_json::to_string(&all)?;
    for secret in [
        PW,
        "another long password",
        issued.secret.expose(),
        "argon2",
    ] {
        assert!(!text.contains(secret), "{secret} in the audit log: {text}");
    }
    // Filters and paging.
    let ops_only = page(AuditFilter {
        action: Some("operator.".into()),
        limit: 10,
        ..Default::default()
    })
    .await?;
    assert_eq!(ops_only.len(), 2);
    let first = page(AuditFilter {
        limit: 2,
        ..Default::default()
    })
    .await?;
    let next = page(AuditFilter {
        limit: 2,
        before_id: first.last().map(|e| e.id),
        ..Default::default()
    })
    .await?;
    assert_eq!(next[0].action, "operator.create");
    // `_` in a pool name is no wildcard.
    let p2 = page(AuditFilter {
        pool: Some("p_2".into()),
        limit: 10,
        ..Default::default()
    })
    .await?;
    assert_eq!(p2.len(), 1);
    for limit in [0, 1001] {
        let e = page(AuditFilter {
            limit,
            ..Default::default()
        })
        .await
        .err();
        assert_eq!(e.as_ref().map(OpsError::kind), Some(ErrorKind::Invalid));
        assert_eq!(e.as_ref().and_then(OpsError::field), Some("limit"));
    }
    // A viewer reads the rows about its pools and its own, nothing else.
    let viewer = acting(
        ops,
        &operators::verify_token(ops, issued.secret.expose()).await?,
    );
    let read = |f: AuditFilter| {
        let viewer = &viewer;
        async move { operators::audit(viewer, f).await.map(|o| o.value) }
    };
    let seen = read(AuditFilter {
        limit: 100,
        ..Default::default()
    })
    .await?;
    let seen_actions: Vec<&str> = seen.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        seen_actions,
        vec![
            "operator.set_password",
            "token.create",
            "operator.create",
            "pool.create"
        ]
    );
    assert!(seen.iter().all(|e| e.pools.contains(&"p1".to_owned())));
    // A pool it does not see does not exist for it, as a pool nobody has.
    let unseen = read(AuditFilter {
        pool: Some("p_2".into()),
        limit: 10,
        ..Default::default()
    })
    .await
    .err();
    let missing = read(AuditFilter {
        pool: Some("gone".into()),
        limit: 10,
        ..Default::default()
    })
    .await
    .err();
    assert_eq!(
        unseen.as_ref().map(OpsError::kind),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        unseen.map(|e| e.to_string().replace("p_2", "X")),
        missing.map(|e| e.to_string().replace("gone", "X"))
    );
    // Its own refused change is its own row (no pool of its own needed).
    let _ = operators::create(&viewer, "x", Role::Viewer, &[], None).await;
    let own = read(AuditFilter {
        outcome: Some("forbidden".into()),
        limit: 10,
        ..Default::default()
    })
    .await?;
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].actor, "token:ci");
    Ok(())
}

async fn a_second_factor_is_enrolled_confirmed_and_required(ops: &Ops) -> TestResult {
    operators::create(ops, "root", Role::Owner, &[], Some(PW)).await?;
    let enrolled = operators::totp_enroll(ops, "root").await?.value;
    assert!(enrolled
        .uri
        .starts_with("otpauth://totp/codexmesh:root?secret="));
    assert!(!format!("{enrolled:?}").contains(&enrolled.secret_base32));
    // Not enabled until confirmed: the password alone still signs in.
    operators::sign_in(ops, "root", PW, None).await?;
    let totp = totp_of(&enrolled.secret_base32)?;
    let e = operators::totp_confirm(ops, "root", "000000x").await.err();
    assert_eq!(e.as_ref().map(OpsError::kind), Some(ErrorKind::Invalid));
    assert_eq!(e.as_ref().and_then(OpsError::field), Some("code"));
    let confirming = code_in(&totp, 0)?;
    let confirmed = operators::totp_confirm(ops, "root", &confirming)
        .await?
        .value;
    assert!(confirmed.changed && confirmed.item.totp_enabled);
    // Now a code is required: the right password without one is asked for it (the second
    // step of a sign-in form), as often as it likes: it is not a failure and locks nothing;
    // a wrong password without a code stays a plain failure.
    for _ in 0..8 {
        assert_eq!(
            kind(operators::sign_in(ops, "root", PW, None).await),
            Some(ErrorKind::TotpRequired)
        );
    }
    assert_eq!(
        kind(operators::sign_in(ops, "root", "not the password", None).await),
        Some(ErrorKind::Unauthenticated)
    );
    // The code that confirmed the factor is used up.
    assert_eq!(
        kind(operators::sign_in(ops, "root", PW, Some(&confirming)).await),
        Some(ErrorKind::Unauthenticated)
    );
    // The next step's code works once; then neither it nor an older one works again.
    let next = code_in(&totp, 1)?;
    operators::sign_in(ops, "root", PW, Some(&next)).await?;
    assert_eq!(
        kind(operators::sign_in(ops, "root", PW, Some(&next)).await),
        Some(ErrorKind::Unauthenticated)
    );
    assert_eq!(
        kind(operators::sign_in(ops, "root", PW, Some(&code_in(&totp, -1)?)).await),
        Some(ErrorKind::Unauthenticated)
    );
    // No secret or code in the audit log.
    let log = operators::audit(
        ops,
        AuditFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await?
    .value;
    let text = serde_json::to_string(&log)?;
    for secret in [&enrolled.secret_base32, &confirming, &next, &PW.to_owned()] {
        assert!(!text.contains(secret.as_str()), "{secret} in {text}");
    }
    assert!(log.iter().any(|e| e.action == "operator.totp_enable"));
    operators::totp_disable(ops, "root").await?;
    operators::sign_in(ops, "root", PW, None).await?;
    Ok(())
}

/// `require_totp`: without a second factor a sign-in gets a restricted session that can only
/// set one up; confirming ends it, and the next sign-in (password and a new code) is full.
async fn require_totp_restricts_sessions_until_a_second_factor(
    ops: &Ops,
    without_setting: &Ops,
) -> TestResult {
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    operators::create(ops, "root", Role::Owner, &[], Some(PW)).await?;
    operators::create(ops, "adm", Role::Admin, &["p1".into()], Some(PW)).await?;
    // A full session issued before the setting was on is restricted now too.
    let before = operators::sign_in(without_setting, "adm", PW, None)
        .await?
        .value;
    assert!(!before.totp_setup_required);
    let s = operators::verify_session(ops, before.token.expose()).await?;
    assert!(s.totp_setup_only);

    let signed = operators::sign_in(ops, "root", PW, None).await?.value;
    assert!(signed.totp_setup_required);
    assert!(
        signed.expires_at_ms - now_ms() <= operators::TOTP_SETUP_SESSION_TTL_SECS * 1000,
        "a restricted session is short"
    );
    let s = operators::verify_session(ops, signed.token.expose()).await?;
    assert!(s.totp_setup_only);
    assert_eq!(s.operator.role, Role::Owner);
    // Its access sees no pool and changes nothing (a surface refuses the rest anyway).
    assert_eq!(s.access.role, Role::Viewer);
    assert!(s.access.pools.is_empty() && !s.access.sees_pool("p1"));
    let restricted = acting(ops, &s.access);
    assert_eq!(
        kind(operators::create(&restricted, "x", Role::Viewer, &[], None).await),
        Some(ErrorKind::Forbidden)
    );
    assert_eq!(
        kind(operators::set_role(&restricted, "adm", Role::Viewer).await),
        Some(ErrorKind::NotFound)
    );
    let names: Vec<String> = operators::list(&restricted)
        .await?
        .value
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, vec!["root".to_owned()]);
    // It sets up its own second factor.
    let enrolled = operators::totp_enroll(&restricted, "root").await?.value;
    let totp = totp_of(&enrolled.secret_base32)?;
    operators::totp_confirm(&restricted, "root", &code_in(&totp, 0)?).await?;
    // That ends the restricted session; the next sign-in needs a new code and is full.
    assert_eq!(
        kind(operators::verify_session(ops, signed.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    let full = operators::sign_in(ops, "root", PW, Some(&code_in(&totp, 1)?))
        .await?
        .value;
    assert!(!full.totp_setup_required);
    let s = operators::verify_session(ops, full.token.expose()).await?;
    assert!(!s.totp_setup_only);
    assert_eq!(s.access.role, Role::Owner);
    // A restricted session may sign out.
    let adm = operators::sign_in(ops, "adm", PW, None).await?.value;
    let s = operators::verify_session(ops, adm.token.expose()).await?;
    operators::sign_out(&acting(ops, &s.access)).await?;
    assert_eq!(
        kind(operators::verify_session(ops, adm.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    // API tokens are not sessions: the setting does not touch them.
    let issued = operators::issue_token(ops, "ci", Role::Admin, &["p1".into()])
        .await?
        .value;
    let access = operators::verify_token(ops, issued.secret.expose()).await?;
    assert_eq!(access.role, Role::Admin);
    assert!(access.may_change_pool("p1"));
    // Without the setting, the same operator without TOTP gets a full session.
    let s = session(without_setting, "adm", PW).await?;
    assert!(!s.totp_setup_only && s.access.may_change_pool("p1"));
    Ok(())
}

#[tokio::test]
async fn sqlite_bootstrap_secret_makes_one_owner_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    bootstrap_secret_makes_one_owner_once(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_sessions_are_revoked_by_password_role_and_sign_out() -> TestResult {
    let dir = tempfile::tempdir()?;
    sessions_are_revoked_by_password_role_and_sign_out(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_sign_in_failures_lock_the_operator_and_the_address() -> TestResult {
    let dir = tempfile::tempdir()?;
    sign_in_failures_lock_the_operator_and_the_address(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_sign_ins_are_audited_without_secrets() -> TestResult {
    let dir = tempfile::tempdir()?;
    sign_ins_are_audited_without_secrets(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_roles_limit_what_an_operator_may_do() -> TestResult {
    let dir = tempfile::tempdir()?;
    roles_limit_what_an_operator_may_do(&ops_in(&dir, None)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_last_owner_stays_under_concurrent_changes() -> TestResult {
    let dir = tempfile::tempdir()?;
    the_last_owner_stays_under_concurrent_changes(&ops_in(&dir, None)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_failed_sign_ins_are_all_counted() -> TestResult {
    let dir = tempfile::tempdir()?;
    concurrent_failed_sign_ins_are_all_counted(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_api_tokens_are_shown_once_and_revocable() -> TestResult {
    let dir = tempfile::tempdir()?;
    api_tokens_are_shown_once_and_revocable(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_the_audit_log_records_changes_without_secrets() -> TestResult {
    let dir = tempfile::tempdir()?;
    the_audit_log_records_changes_without_secrets(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_a_second_factor_is_enrolled_confirmed_and_required() -> TestResult {
    let dir = tempfile::tempdir()?;
    a_second_factor_is_enrolled_confirmed_and_required(&ops_in(&dir, None)?).await
}

#[tokio::test]
async fn sqlite_require_totp_restricts_sessions_until_a_second_factor() -> TestResult {
    let dir = tempfile::tempdir()?;
    require_totp_restricts_sessions_until_a_second_factor(
        &ops_with(&dir, None, true)?,
        &ops_in(&dir, None)?,
    )
    .await
}

/// Every scenario again on PostgreSQL, one fresh database each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scenarios() -> TestResult {
    let Some(temp) = support::pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        eprintln!("SKIPPED: no PostgreSQL binaries on this machine");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_0").await?;
    bootstrap_secret_makes_one_owner_once(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_1").await?;
    sessions_are_revoked_by_password_role_and_sign_out(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_2").await?;
    sign_in_failures_lock_the_operator_and_the_address(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_3").await?;
    roles_limit_what_an_operator_may_do(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_4").await?;
    api_tokens_are_shown_once_and_revocable(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_4b").await?;
    concurrent_failed_sign_ins_are_all_counted(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_5").await?;
    the_audit_log_records_changes_without_secrets(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_totp").await?;
    a_second_factor_is_enrolled_confirmed_and_required(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_signin").await?;
    sign_ins_are_audited_without_secrets(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_owners").await?;
    the_last_owner_stays_under_concurrent_changes(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_require").await?;
    require_totp_restricts_sessions_until_a_second_factor(
        &ops_with(&dir, Some(url.clone()), true)?,
        &ops_in(&dir, Some(url))?,
    )
    .await?;
    Ok(())
}
