//! `codexmesh operator …` and `codexmesh audit` driven as a user would (issue 11).

use std::io::Write;
use std::process::Stdio;

use codexmesh_test_kit::{Cli, TestResult, Workspace};
use serde_json::Value;

const PW: &str = "correct horse battery";

/// Runs with `--json`, `stdin` piped in; requires success and parses stdout.
fn json_with_stdin(
    ws: &Workspace,
    args: &[&str],
    stdin: &str,
) -> Result<Value, Box<dyn std::error::Error>> {
    let mut child = ws
        .command()
        .args(args)
        .arg("--json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice::<Value>(&out.stdout)?)
}

#[test]
fn operators_are_managed_from_the_shell() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    ws.ok(&["pool", "create", "other"])?;
    let created = json_with_stdin(
        &ws,
        &[
            "operator",
            "create",
            "--name",
            "alice@example.com",
            "--role",
            "admin",
            "--pools",
            "main,other",
        ],
        &format!("{PW}\n"),
    )?;
    assert_eq!(created["role"], "admin");
    assert_eq!(created["pools"], serde_json::json!(["main", "other"]));
    assert!(created.get("password_hash").is_none());

    let assigned = ws.ok_json(&["operator", "assign", "alice@example.com", "--pools", "main"])?;
    assert_eq!(assigned["changed"], true);
    assert_eq!(assigned["pools"], serde_json::json!(["main"]));
    let role = ws.ok_json(&["operator", "set-role", "alice@example.com", "viewer"])?;
    assert_eq!(role["role"], "viewer");
    let disabled = ws.ok_json(&["operator", "disable", "alice@example.com"])?;
    assert_eq!(disabled["disabled"], true);
    let list = ws.ok_json(&["operator", "list"])?;
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    // A second factor: enrolled (secret shown once), not enabled before a right code.
    let enrolled = ws.ok_json(&["operator", "totp-enroll", "alice@example.com"])?;
    assert!(enrolled["uri"]
        .as_str()
        .is_some_and(|u| u.starts_with("otpauth://totp/")));
    let r = ws.run(&[
        "operator",
        "totp-confirm",
        "alice@example.com",
        "--code",
        "123",
    ])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let off = ws.ok_json(&["operator", "totp-disable", "alice@example.com"])?;
    assert_eq!(off["totp_enabled"], false);
    let audit = ws.ok(&["audit", "--json"])?.stdout;
    assert!(!audit.contains(enrolled["secret"].as_str().unwrap_or("-")));

    // Bad input: exit 1 (unknown pool) or 2 (clap: unknown role), nothing written.
    let r = ws.run(&[
        "operator", "create", "--name", "bob", "--role", "viewer", "--pools", "nope",
    ])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no pool named \"nope\""), "{}", r.stderr);
    let r = ws.run(&["operator", "create", "--name", "bob", "--role", "root"])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    // A short password is refused.
    let mut child = ws
        .command()
        .args([
            "operator",
            "set-password",
            "alice@example.com",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(b"short\n")?;
    }
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

#[test]
fn api_tokens_and_bootstrap_secrets_are_shown_once() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let boot = ws.ok_json(&["operator", "bootstrap"])?;
    assert!(boot["secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("cmb_")));
    let token = ws.ok_json(&[
        "operator", "token", "create", "--label", "ci", "--role", "admin", "--pools", "main",
    ])?;
    let secret = token["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("cma_"), "{token}");
    let list = ws.ok_json(&["operator", "token", "list"])?;
    assert_eq!(list[0]["label"], "ci");
    assert!(list[0].get("secret").is_none());
    let revoked = ws.ok_json(&["operator", "token", "revoke", "ci"])?;
    assert_eq!(revoked["changed"], true);
    assert!(revoked["revoked_at_ms"].is_i64());

    // Once an owner exists, no bootstrap secret.
    json_with_stdin(
        &ws,
        &["operator", "create", "--name", "root", "--role", "owner"],
        "",
    )?;
    let r = ws.run(&["operator", "bootstrap"])?;
    assert_eq!(r.code, 1, "{}", r.stderr);

    // The audit log has every change, by the shell user, and no secret.
    let audit = ws.ok_json(&["audit", "--limit", "100"])?;
    let text = audit.to_string();
    assert!(!text.contains(&secret) && !text.contains(boot["secret"].as_str().unwrap_or("-")));
    let actions: Vec<&str> = audit
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        actions,
        vec![
            "operator.create",
            "token.revoke",
            "token.create",
            "operator.bootstrap_secret",
            "pool.create"
        ]
    );
    assert!(audit[0]["actor"]
        .as_str()
        .is_some_and(|a| a.starts_with("cli:")));
    // Filters and paging.
    let tokens = ws.ok_json(&["audit", "--action", "token."])?;
    assert_eq!(tokens.as_array().map(Vec::len), Some(2));
    let first = ws.ok_json(&["audit", "--limit", "2"])?;
    let before = first[1]["id"].as_i64().unwrap_or_default().to_string();
    let next = ws.ok_json(&["audit", "--limit", "2", "--before", &before])?;
    assert_eq!(next[0]["action"], "token.create");
    let pool = ws.ok_json(&["audit", "--pool", "main"])?;
    assert_eq!(pool.as_array().map(Vec::len), Some(3), "{pool}");
    let r = ws.run(&["audit", "--limit", "0"])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    Ok(())
}
