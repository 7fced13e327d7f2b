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
    codexmesh_test_kit::leaks::remember(enrolled["secret"].as_str().unwrap_or_default());
    codexmesh_test_kit::leaks::remember(PW);
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

    // The audit log has every change and the refused bootstrap, by the shell user, and no
    // secret.
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
            "operator.bootstrap_secret",
            "operator.create",
            "token.revoke",
            "token.create",
            "operator.bootstrap_secret",
            "pool.create"
        ]
    );
    assert_eq!(audit[0]["outcome"], "conflict");
    assert_eq!(audit[1]["outcome"], "ok");
    assert!(audit[0]["actor"]
        .as_str()
        .is_some_and(|a| a.starts_with("cli:")));
    // Filters and paging.
    let tokens = ws.ok_json(&["audit", "--action", "token."])?;
    assert_eq!(tokens.as_array().map(Vec::len), Some(2));
    let first = ws.ok_json(&["audit", "--limit", "2"])?;
    let before = first[1]["id"].as_i64().unwrap_or_default().to_string();
    let next = ws.ok_json(&["audit", "--limit", "2", "--before", &before])?;
    assert_eq!(next[0]["action"], "token.revoke");
    let pool = ws.ok_json(&["audit", "--pool", "main"])?;
    assert_eq!(pool.as_array().map(Vec::len), Some(3), "{pool}");
    let refused = ws.ok_json(&["audit", "--outcome", "conflict"])?;
    assert_eq!(refused.as_array().map(Vec::len), Some(1), "{refused}");
    let target = audit[1]["target"].as_str().unwrap_or("-").to_owned();
    let about = ws.ok_json(&["audit", "--target", &target])?;
    assert_eq!(about[0]["action"], "operator.create", "{about}");
    let recent = ws.ok_json(&["audit", "--since", "1h"])?;
    assert_eq!(recent.as_array().map(Vec::len), Some(6), "{recent}");
    let r = ws.run(&["audit", "--limit", "0"])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let r = ws.run(&["audit", "--since", "soon"])?;
    assert_eq!(r.code, 2, "a bad duration is a usage error: {}", r.stderr);
    Ok(())
}

/// `operator create|set-password` never take a password as an argument; without
/// `--password-stdin` and without a terminal, set-password refuses and changes nothing.
#[test]
fn passwords_are_never_arguments() -> TestResult {
    let ws = Workspace::new()?;
    json_with_stdin(
        &ws,
        &["operator", "create", "--name", "dora", "--role", "owner"],
        "",
    )?;
    for args in [
        &[
            "operator",
            "create",
            "--name",
            "eve",
            "--role",
            "owner",
            "--password",
            PW,
        ][..],
        &["operator", "set-password", "dora", PW],
        &["operator", "set-password", "dora", "--password", PW],
    ] {
        let r = ws.run(args)?;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
    // stdin is /dev/null here: no terminal to type at.
    let r = ws.run(&["operator", "set-password", "dora"])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--password-stdin"), "{}", r.stderr);
    let audit = ws.ok_json(&["audit", "--action", "operator.set_password"])?;
    assert_eq!(audit.as_array().map(Vec::len), Some(0), "{audit}");
    // From stdin (scripts): set, and no note that it has none.
    let mut child = ws
        .command()
        .args(["operator", "set-password", "dora", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(format!("{PW}\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PW), "{text}");
    let audit = ws.ok_json(&["audit", "--action", "operator.set_password"])?;
    assert_eq!(audit[0]["outcome"], "ok");
    assert!(!audit.to_string().contains(PW));
    Ok(())
}

/// A refused change is in the audit log with its outcome (the table shows it too).
#[test]
fn refused_changes_are_audited() -> TestResult {
    let ws = Workspace::new()?;
    json_with_stdin(
        &ws,
        &["operator", "create", "--name", "root", "--role", "owner"],
        "",
    )?;
    let r = ws.run(&["operator", "disable", "root"])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("last owner"), "{}", r.stderr);
    let rows = ws.ok_json(&["audit", "--action", "operator.disable"])?;
    assert_eq!(rows[0]["outcome"], "conflict", "{rows}");
    assert_eq!(rows[0]["revision"], 0);
    let table = ws.ok(&["audit"])?.stdout;
    assert!(
        table.contains("OUTCOME") && table.contains("conflict"),
        "{table}"
    );
    Ok(())
}

/// Runs `codexmesh ARGS` on a pseudo-terminal (`script`), answering each password prompt once
/// it shows; returns the exit code and everything the terminal showed. None without `script`.
fn run_on_terminal(
    ws: &Workspace,
    args: &[&str],
    answers: &[&str],
) -> Result<Option<(i32, String)>, Box<dyn std::error::Error>> {
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(None);
    }
    let base = ws.command();
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = quote(&base.get_program().to_string_lossy());
    for a in base.get_args().chain(args.iter().map(std::ffi::OsStr::new)) {
        line.push(' ');
        line.push_str(&quote(&a.to_string_lossy()));
    }
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"]);
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    if let Some(dir) = base.get_current_dir() {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    let mut input = child.stdin.take().ok_or("no stdin")?;
    for (i, answer) in answers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while String::from_utf8_lossy(&shown)
            .matches("password for")
            .count()
            <= i
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => shown.extend(chunk),
                Err(_) => {
                    let _ = child.kill();
                    return Err(
                        format!("no prompt {i}: {}", String::from_utf8_lossy(&shown)).into(),
                    );
                }
            }
        }
        // The prompt is written just before the terminal leaves echo mode.
        std::thread::sleep(Duration::from_millis(300));
        input.write_all(format!("{answer}\r").as_bytes())?;
        input.flush()?;
    }
    let status = child.wait()?;
    drop(input);
    let _ = reader.join();
    shown.extend(rx.try_iter().flatten());
    Ok(Some((
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&shown).into_owned(),
    )))
}

/// At a terminal, the password is typed twice without echo.
#[test]
fn passwords_are_typed_at_a_terminal_without_echo() -> TestResult {
    let ws = Workspace::new()?;
    let Some((code, shown)) = run_on_terminal(
        &ws,
        &["operator", "create", "--name", "tty", "--role", "owner"],
        &[PW, PW],
    )?
    else {
        eprintln!("SKIPPED: no `script` to run on a terminal");
        return Ok(());
    };
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("password for tty (empty: none yet): "),
        "{shown}"
    );
    assert!(!shown.contains(PW), "the password was echoed: {shown}");
    assert!(!shown.contains("no password yet"), "{shown}");
    // Two different answers change nothing.
    let Some((code, shown)) = run_on_terminal(
        &ws,
        &["operator", "set-password", "tty"],
        &["another long password", "a different password"],
    )?
    else {
        return Ok(());
    };
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("differ"), "{shown}");
    let Some((code, shown)) = run_on_terminal(
        &ws,
        &["operator", "set-password", "tty"],
        &["another long password", "another long password"],
    )?
    else {
        return Ok(());
    };
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("another long password"), "{shown}");
    let audit = ws.ok_json(&["audit", "--action", "operator.set_password"])?;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
    Ok(())
}
