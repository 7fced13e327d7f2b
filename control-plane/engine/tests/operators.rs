//! Operators, roles, sessions, API tokens and the audit log through the use cases (issue 11),
//! on SQLite, and on a throwaway PostgreSQL cluster when its binaries are installed.

mod support;

use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::{operators, ErrorKind, Ops, OpsError};
use codexmesh_model::operators::{Access, Role};
use codexmesh_store::{Actor, AuditFilter};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PW: &str = "correct horse battery";

/// Use cases on `store` (SQLite in `dir` when None) with `dir` as the data dir.
fn ops_in(
    dir: &tempfile::TempDir,
    store: Option<String>,
) -> Result<Ops, Box<dyn std::error::Error>> {
    let flags = SettingsFlags {
        store: Some(store.unwrap_or_else(|| format!("sqlite://{}/cm.db", dir.path().display()))),
        data_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    Ok(Ops::new(settings, Actor::new("cli:tester")))
}

fn kind<T: std::fmt::Debug>(r: Result<T, OpsError>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind())
}

async fn bootstrap_secret_makes_one_owner_once(ops: &Ops) -> TestResult {
    let first = operators::bootstrap_secret(ops).await?.value;
    let second = operators::bootstrap_secret(ops).await?.value;
    // Only the newest secret works.
    assert_eq!(
        kind(operators::bootstrap_owner(ops, first.secret.expose(), "root", PW).await),
        Some(ErrorKind::NotFound)
    );
    let owner = operators::bootstrap_owner(ops, second.secret.expose(), "root", PW)
        .await?
        .value;
    assert_eq!(owner.role, Role::Owner);
    // Valid once, and no new secret once an owner exists.
    assert_eq!(
        kind(operators::bootstrap_owner(ops, second.secret.expose(), "root2", PW).await),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(operators::bootstrap_secret(ops).await),
        Some(ErrorKind::Conflict)
    );
    Ok(())
}

async fn sessions_are_revoked_by_password_role_and_sign_out(ops: &Ops) -> TestResult {
    let shell = Access::shell("tester");
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    operators::create(ops, &shell, "root", Role::Owner, &[], Some(PW)).await?;
    let alice = operators::create(ops, &shell, "alice", Role::Admin, &["p1".into()], Some(PW))
        .await?
        .value;
    assert_eq!(alice.pools, vec!["p1".to_owned()]);

    let signed = operators::sign_in(ops, "alice", PW, None, "10.0.0.1")
        .await?
        .value;
    let access = operators::verify_session(ops, signed.token.expose()).await?;
    assert_eq!(access.role, Role::Admin);
    assert!(access.may_change_pool("p1") && !access.sees_pool("p2"));

    operators::set_password(ops, &access, "alice", "another long password").await?;
    assert_eq!(
        kind(operators::verify_session(ops, signed.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    let signed = operators::sign_in(ops, "alice", "another long password", None, "10.0.0.1")
        .await?
        .value;
    operators::set_role(ops, &shell, "alice", Role::Viewer).await?;
    assert_eq!(
        kind(operators::verify_session(ops, signed.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    let signed = operators::sign_in(ops, "alice", "another long password", None, "10.0.0.1")
        .await?
        .value;
    let access = operators::verify_session(ops, signed.token.expose()).await?;
    operators::sign_out(ops, &access).await?;
    assert_eq!(
        kind(operators::verify_session(ops, signed.token.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    // A tampered token is refused.
    let mut forged = signed.token.expose().to_owned();
    forged.push('x');
    assert_eq!(
        kind(operators::verify_session(ops, &forged).await),
        Some(ErrorKind::Unauthenticated)
    );
    Ok(())
}

async fn sign_in_failures_lock_the_operator_and_the_address(ops: &Ops) -> TestResult {
    let shell = Access::shell("tester");
    operators::create(ops, &shell, "bob", Role::Owner, &[], Some(PW)).await?;
    for _ in 0..operators::OPERATOR_THROTTLE.max_failures {
        assert_eq!(
            kind(operators::sign_in(ops, "bob", "wrong password!!", None, "10.0.0.2").await),
            Some(ErrorKind::Unauthenticated)
        );
    }
    // Locked: even the right password is refused, before it is checked.
    assert_eq!(
        kind(operators::sign_in(ops, "bob", PW, None, "10.0.0.3").await),
        Some(ErrorKind::RateLimited)
    );
    // Unknown names count against the address.
    for _ in 0..operators::CLIENT_THROTTLE.max_failures {
        let _ = operators::sign_in(ops, "nobody", "wrong password!!", None, "10.0.0.9").await;
    }
    assert_eq!(
        kind(operators::sign_in(ops, "nobody", PW, None, "10.0.0.9").await),
        Some(ErrorKind::RateLimited)
    );
    // A password change clears the operator's lock.
    operators::set_password(ops, &shell, "bob", "a new long password").await?;
    operators::sign_in(ops, "bob", "a new long password", None, "10.0.0.3").await?;
    Ok(())
}

async fn roles_limit_what_an_operator_may_do(ops: &Ops) -> TestResult {
    let shell = Access::shell("tester");
    let store = ops.store().await?;
    store.create_pool(ops.actor(), "p1").await?;
    store.create_pool(ops.actor(), "p2").await?;
    operators::create(ops, &shell, "root", Role::Owner, &[], Some(PW)).await?;
    operators::create(ops, &shell, "adm", Role::Admin, &["p1".into()], Some(PW)).await?;
    operators::create(ops, &shell, "other", Role::Viewer, &["p2".into()], Some(PW)).await?;
    let adm = operators::verify_session(
        ops,
        operators::sign_in(ops, "adm", PW, None, "c")
            .await?
            .value
            .token
            .expose(),
    )
    .await?;
    // An admin creates viewers in its pools; a pool it does not see does not exist for it.
    operators::create(ops, &adm, "v1", Role::Viewer, &["p1".into()], Some(PW)).await?;
    assert_eq!(
        kind(operators::create(ops, &adm, "v2", Role::Viewer, &["p2".into()], None).await),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(operators::create(ops, &adm, "o2", Role::Owner, &[], None).await),
        Some(ErrorKind::Forbidden)
    );
    // It does not see the owner or the p2 viewer; it cannot promote itself.
    let seen: Vec<String> = operators::list(ops, &adm)
        .await?
        .value
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(seen, vec!["adm".to_owned(), "v1".to_owned()]);
    assert_eq!(
        kind(operators::set_disabled(ops, &adm, "other", true).await),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(operators::set_role(ops, &adm, "adm", Role::Owner).await),
        Some(ErrorKind::Forbidden)
    );
    // A viewer changes nothing.
    let v1 = operators::verify_session(
        ops,
        operators::sign_in(ops, "v1", PW, None, "c")
            .await?
            .value
            .token
            .expose(),
    )
    .await?;
    assert!(!v1.may_change_pool("p1") && v1.sees_pool("p1"));
    assert_eq!(
        kind(operators::issue_token(ops, &v1, "t", Role::Viewer, &["p1".into()]).await),
        Some(ErrorKind::Forbidden)
    );
    // The last owner stays.
    assert_eq!(
        kind(operators::set_disabled(ops, &shell, "root", true).await),
        Some(ErrorKind::Conflict)
    );
    // Disabling signs out.
    let t = operators::sign_in(ops, "v1", PW, None, "c")
        .await?
        .value
        .token;
    operators::set_disabled(ops, &shell, "v1", true).await?;
    assert_eq!(
        kind(operators::verify_session(ops, t.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    assert_eq!(
        kind(operators::sign_in(ops, "v1", PW, None, "c").await),
        Some(ErrorKind::Unauthenticated)
    );
    Ok(())
}

async fn api_tokens_are_shown_once_and_revocable(ops: &Ops) -> TestResult {
    let shell = Access::shell("tester");
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    let issued = operators::issue_token(ops, &shell, "ci", Role::Admin, &["p1".into()])
        .await?
        .value;
    assert!(issued.secret.expose().starts_with("cma_"));
    let access = operators::verify_token(ops, issued.secret.expose()).await?;
    assert_eq!(access.role, Role::Admin);
    assert_eq!(access.principal.actor(), "token:ci");
    assert!(access.may_change_pool("p1") && !access.sees_pool("p2"));
    let listed = operators::list_tokens(ops, &shell).await?.value;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at_ms.is_some());
    assert!(
        operators::revoke_token(ops, &shell, "ci")
            .await?
            .value
            .changed
    );
    assert_eq!(
        kind(operators::verify_token(ops, issued.secret.expose()).await),
        Some(ErrorKind::Unauthenticated)
    );
    Ok(())
}

async fn the_audit_log_records_changes_without_secrets(ops: &Ops) -> TestResult {
    let shell = Access::shell("tester");
    ops.store().await?.create_pool(ops.actor(), "p1").await?;
    ops.store().await?.create_pool(ops.actor(), "p_2").await?;
    operators::create(ops, &shell, "adm", Role::Admin, &["p1".into()], Some(PW)).await?;
    let issued = operators::issue_token(ops, &shell, "ci", Role::Viewer, &["p1".into()])
        .await?
        .value;
    operators::set_password(ops, &shell, "adm", "another long password").await?;
    let all = operators::audit(
        ops,
        &shell,
        AuditFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await?
    .value;
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
    let page = |f: AuditFilter| {
        let shell = &shell;
        async move { operators::audit(ops, shell, f).await.map(|o| o.value) }
    };
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
    assert_eq!(
        kind(
            page(AuditFilter {
                limit: 0,
                ..Default::default()
            })
            .await
        ),
        Some(ErrorKind::Invalid)
    );
    // A viewer reads only about its own pools.
    let viewer = operators::verify_token(ops, issued.secret.expose()).await?;
    assert_eq!(
        kind(
            operators::audit(
                ops,
                &viewer,
                AuditFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
        ),
        Some(ErrorKind::Forbidden)
    );
    Ok(())
}

async fn a_second_factor_is_enrolled_confirmed_and_required(ops: &Ops) -> TestResult {
    let shell = Access::shell("tester");
    operators::create(ops, &shell, "root", Role::Owner, &[], Some(PW)).await?;
    let enrolled = operators::totp_enroll(ops, &shell, "root").await?.value;
    assert!(enrolled
        .uri
        .starts_with("otpauth://totp/codexmesh:root?secret="));
    assert!(!format!("{enrolled:?}").contains(&enrolled.secret_base32));
    // Not enabled until confirmed: the password alone still signs in.
    operators::sign_in(ops, "root", PW, None, "c").await?;
    let secret = totp_rs::Secret::Encoded(enrolled.secret_base32.clone()).to_bytes()?;
    let totp = totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, secret)?;
    assert_eq!(
        kind(operators::totp_confirm(ops, &shell, "root", "000000x").await),
        Some(ErrorKind::Invalid)
    );
    let confirmed = operators::totp_confirm(ops, &shell, "root", &totp.generate_current()?)
        .await?
        .value;
    assert!(confirmed.changed && confirmed.item.totp_enabled);
    // Now a code is required.
    assert_eq!(
        kind(operators::sign_in(ops, "root", PW, None, "c").await),
        Some(ErrorKind::Unauthenticated)
    );
    let code = totp.generate_current()?;
    operators::sign_in(ops, "root", PW, Some(&code), "c").await?;
    // No secret in the audit log.
    let log = operators::audit(
        ops,
        &shell,
        AuditFilter {
            action: Some("operator.".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await?
    .value;
    assert!(!serde_json::to_string(&log)?.contains(&enrolled.secret_base32));
    operators::totp_disable(ops, &shell, "root").await?;
    operators::sign_in(ops, "root", PW, None, "c").await?;
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
async fn sqlite_roles_limit_what_an_operator_may_do() -> TestResult {
    let dir = tempfile::tempdir()?;
    roles_limit_what_an_operator_may_do(&ops_in(&dir, None)?).await
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

/// Every scenario again on PostgreSQL, one fresh database each.
#[tokio::test]
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
    let url = support::empty_database(&temp, "op_5").await?;
    the_audit_log_records_changes_without_secrets(&ops_in(&dir, Some(url))?).await?;
    let dir = tempfile::tempdir()?;
    let url = support::empty_database(&temp, "op_totp").await?;
    a_second_factor_is_enrolled_confirmed_and_required(&ops_in(&dir, Some(url))?).await?;
    Ok(())
}
