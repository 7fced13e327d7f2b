//! `codexmesh alert …`, `pool forecast` and `pool warmup` (issue 15) from the command line: the
//! webhook secret is printed once and never again, bad input is a message and a non-zero exit,
//! changes are audited.

use codexmesh_test_kit::cli::{Cli, Workspace};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn alerts_forecast_and_warmup_from_the_cli() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "team"])?;

    // The secret: on stdout, once.
    let added = ws.ok(&[
        "alert",
        "webhook",
        "add",
        "ops",
        "--url",
        "http://127.0.0.1:9/hooks/T0/secret-path",
        "--pool",
        "team",
    ])?;
    let secret = added.stdout.trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{}", added.stdout);
    assert!(added.stderr.contains("shown only now"), "{}", added.stderr);
    let listed = ws.ok_json(&["alert", "webhook", "list"])?;
    assert_eq!(listed[0]["name"], "ops");
    assert_eq!(listed[0]["url"], "http://127.0.0.1:9/…");
    assert!(!listed.to_string().contains(&secret));
    assert!(!listed.to_string().contains("secret-path"));

    // Bad input: a message naming the problem and exit 1, nothing added.
    let bad = ws.run(&["alert", "webhook", "add", "x", "--url", "ftp://h/"])?;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("http:// or https://"), "{}", bad.stderr);
    let none = ws.run(&[
        "alert",
        "webhook",
        "add",
        "y",
        "--url",
        "http://h/",
        "--pool",
        "nope",
    ])?;
    assert_eq!(none.code, 1);
    assert!(none.stderr.contains("nope"), "{}", none.stderr);

    // A test delivery to a closed port: not delivered, recorded on the webhook.
    let test = ws.run(&["alert", "webhook", "test", "ops"])?;
    assert_eq!(test.code, 1, "{test:?}");
    assert!(test.stderr.contains("not delivered"), "{}", test.stderr);
    let listed = ws.ok_json(&["alert", "webhook", "list"])?;
    assert_eq!(listed[0]["last_status"], 0);

    // No evidence yet: the forecast knows nothing.
    let f = ws.ok_json(&["pool", "forecast", "team"])?;
    assert_eq!(f["pool"], "team");
    assert!(f["primary"]["used_percent"].is_null());
    assert_eq!(f["primary"]["runs_out_before_reset"], false);
    let table = ws.ok(&["pool", "forecast", "team"])?;
    assert!(table.stdout.contains("5-hour"), "{}", table.stdout);
    assert_eq!(ws.run(&["pool", "forecast", "nope"])?.code, 1);

    // Warm-up: on, shown, off; a bad time names `at`.
    let on = ws.ok(&[
        "pool",
        "warmup",
        "team",
        "--at",
        "07:30",
        "--weekdays",
        "mon-fri",
    ])?;
    assert!(
        on.stdout
            .contains("on, at 07:30 UTC on mon,tue,wed,thu,fri"),
        "{}",
        on.stdout
    );
    let shown = ws.ok_json(&["pool", "warmup", "team"])?;
    assert_eq!(
        (shown["enabled"].as_bool(), shown["at"].as_str()),
        (Some(true), Some("07:30"))
    );
    let bad = ws.run(&["pool", "warmup", "team", "--at", "25:00"])?;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("HH:MM"), "{}", bad.stderr);
    let off = ws.ok(&["pool", "warmup", "team", "--off"])?;
    assert!(off.stdout.contains("warm-up: off"), "{}", off.stdout);

    assert!(ws.ok(&["alert", "episodes"])?.stdout.contains("no alerts"));
    ws.ok(&["alert", "webhook", "remove", "ops"])?;
    assert_eq!(
        ws.ok_json(&["alert", "webhook", "list"])?,
        serde_json::json!([])
    );

    let audit = ws.ok_json(&["audit", "--limit", "100"])?.to_string();
    for action in [
        "alert.webhook_add",
        "alert.webhook_test",
        "alert.webhook_remove",
        "pool.set_warmup",
    ] {
        assert!(audit.contains(action), "{action} not audited: {audit}");
    }
    assert!(!audit.contains(&secret));
    Ok(())
}
