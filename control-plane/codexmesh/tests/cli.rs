//! The `codexmesh` binary, driven as a user would, in a temp dir.

use std::os::unix::fs::PermissionsExt;

use codexmesh_test_kit::{self as kit, Cli, Login, TestResult, Workspace};
use serde_json::Value;

fn assert_no_secrets(text: &str, login: &Login) {
    for (what, secret) in [
        ("access token", &login.access_token),
        ("refresh token", &login.refresh_token),
        ("id token", &login.id_token),
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "{what} leaked into: {text}"
        );
    }
}

#[test]
fn pool_create_list_and_duplicates() -> TestResult {
    let ws = Workspace::new()?;
    let created = ws.ok_json(&["pool", "create", "team-a"])?;
    assert_eq!(created["name"], "team-a");
    assert!(created["id"]
        .as_str()
        .is_some_and(|s| s.starts_with("pool_")));
    assert_eq!(created["strategy"], "quota_first");

    let plain = ws.ok(&["pool", "create", "team.b_2"])?;
    assert!(
        plain.stdout.contains("created pool team.b_2"),
        "{}",
        plain.stdout
    );

    let dup = ws.run(&["pool", "create", "team-a"])?;
    assert_eq!(dup.code, 1, "duplicate: {}", dup.stderr);
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);

    for bad in ["has space", "slash/no", "", &"x".repeat(65)] {
        let r = ws.run(&["pool", "create", bad])?;
        assert_eq!(r.code, 1, "{bad:?}: {}", r.stderr);
        assert!(r.stderr.contains("invalid pool name"), "{}", r.stderr);
    }

    let list = ws.ok_json(&["pool", "list"])?;
    let names: Vec<&str> = list
        .as_array()
        .ok_or("pool list --json is not an array")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["team-a", "team.b_2"]);
    assert_eq!(list[0]["accounts"], 0);
    assert_eq!(list[0]["keys"]["active"], 0);
    let plain = ws.ok(&["pool", "list"])?;
    assert!(plain.stdout.starts_with("POOL"), "{}", plain.stdout);
    Ok(())
}

#[test]
fn import_then_reimport_updates_in_place() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let login = Login::new("acct-111", "alice@example.com", "pro", "one");
    let path = ws.write_auth("auth.json", &login.auth_json())?;
    let p = path.to_str().ok_or("path")?;

    let first = ws.ok_json(&["account", "import", p, "--pool", "main"])?;
    assert_eq!(first["action"], "created");
    let acc = &first["account"];
    assert_eq!(acc["label"], "alice@example.com");
    assert_eq!(acc["chatgpt_account_id"], "acct-111");
    assert_eq!(acc["email"], "alice@example.com");
    assert_eq!(acc["plan"], "pro");
    assert_eq!(acc["state"], "active");
    assert_eq!(acc["pool"], "main");
    assert_eq!(acc["access_token_expires_at_ms"], login.exp * 1000);
    let id = acc["id"].as_str().ok_or("id")?.to_owned();

    // Secrets were generated private; tokens are sealed at rest.
    for f in [ws.data_dir().join("master.key"), ws.db_path()] {
        let mode = std::fs::metadata(&f)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    let db = ws.store_bytes()?;
    for secret in [&login.access_token, &login.refresh_token, &login.id_token] {
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a token is stored in clear"
        );
    }

    // Same ChatGPT account again, fresh tokens, explicit label: updated, not duplicated.
    let login2 = Login::new("acct-111", "alice@example.com", "pro", "two");
    let path2 = ws.write_auth("auth2.json", &login2.auth_json())?;
    let again = ws.ok(&[
        "account",
        "import",
        path2.to_str().ok_or("path")?,
        "--pool",
        "main",
        "--name",
        "alice",
    ])?;
    assert!(
        again.stdout.contains("updated its tokens"),
        "{}",
        again.stdout
    );
    assert_no_secrets(&again.stdout, &login2);
    assert_no_secrets(&again.stderr, &login2);
    let list = ws.ok_json(&["account", "list", "--pool", "main"])?;
    let arr = list.as_array().ok_or("array")?;
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["id"], id.as_str());
    assert_eq!(arr[0]["label"], "alice");

    // Unknown pool: exit 1 with a message, nothing written.
    let before = kit::logical_state(&ws)?;
    let r = ws.run(&["account", "import", p, "--pool", "nope"])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no pool named \"nope\""), "{}", r.stderr);
    assert_eq!(before, kit::logical_state(&ws)?);
    Ok(())
}

#[test]
fn malformed_auth_json_exits_2_and_writes_nothing() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let good = Login::new("acct-1", "a@example.com", "plus", "n");
    let gp = ws.write_auth("good.json", &good.auth_json())?;
    ws.ok(&[
        "account",
        "import",
        gp.to_str().ok_or("path")?,
        "--pool",
        "main",
    ])?;

    let no_id = kit::jwt(&serde_json::json!({"email": "x@example.com"}));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "not-json",
            "this is { not json".to_owned(),
            "not valid JSON",
        ),
        (
            "no-tokens",
            r#"{"auth_mode":"chatgpt","OPENAI_API_KEY":null}"#.to_owned(),
            "tokens",
        ),
        (
            "missing-refresh",
            serde_json::json!({"auth_mode": "chatgpt", "tokens": {
                "id_token": good.id_token, "access_token": good.access_token}})
            .to_string(),
            "refresh_token",
        ),
        (
            "bad-jwt",
            serde_json::json!({"auth_mode": "chatgpt", "tokens": {
                "id_token": "definitely-not-a-jwt", "access_token": good.access_token,
                "refresh_token": "rt"}})
            .to_string(),
            "id_token is not a decodable JWT",
        ),
        (
            "no-account-id",
            serde_json::json!({"auth_mode": "chatgpt", "tokens": {
                "id_token": no_id, "access_token": kit::jwt(&serde_json::json!({"exp": 1})),
                "refresh_token": "rt"}})
            .to_string(),
            "no ChatGPT account id",
        ),
        (
            "api-key-login",
            r#"{"auth_mode":"apikey","OPENAI_API_KEY":"sk-123"}"#.to_owned(),
            "not a ChatGPT login",
        ),
    ];
    let before = kit::logical_state(&ws)?;
    for (name, contents, expect) in cases {
        let p = ws.write_auth(&format!("{name}.json"), &contents)?;
        let r = ws.run(&[
            "account",
            "import",
            p.to_str().ok_or("path")?,
            "--pool",
            "main",
        ])?;
        assert_eq!(r.code, 2, "{name}: stderr {}", r.stderr);
        assert!(r.stderr.contains(expect), "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("{name}.json")),
            "{name}: names the file: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(r.stdout.is_empty(), "{name}: {}", r.stdout);
    }
    let missing = ws.run(&[
        "account",
        "import",
        "/nonexistent/auth.json",
        "--pool",
        "main",
    ])?;
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert_eq!(before, kit::logical_state(&ws)?, "store changed");
    Ok(())
}

#[test]
fn keys_are_shown_once_and_revocable() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;

    let plain = ws.ok(&["key", "create", "--pool", "main"])?;
    let raw = plain.stdout.lines().next().ok_or("no key line")?.to_owned();
    assert!(raw.starts_with("cmk_") && raw.len() == 44, "{raw}");
    assert!(raw[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(plain.stderr.contains("only once"), "{}", plain.stderr);

    let j = ws.ok_json(&[
        "key",
        "create",
        "--pool",
        "main",
        "--name",
        "ci",
        "--operator",
    ])?;
    let raw2 = j["key"].as_str().ok_or("key")?.to_owned();
    assert!(raw2.starts_with("cmk_"));
    assert_eq!(j["pool"], "main");
    assert_eq!(j["label"], "ci");
    let id2 = j["id"].as_str().ok_or("id")?.to_owned();

    let list = ws.ok(&["key", "list"])?;
    let list_json = ws.ok_json(&["key", "list", "--pool", "main"])?;
    for text in [&list.stdout, &list_json.to_string()] {
        assert!(
            !text.contains(&raw) && !text.contains(&raw2),
            "raw key listed"
        );
    }
    let arr = list_json.as_array().ok_or("array")?;
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["label"], "key-1");
    assert_eq!(arr[1]["operator"], true);
    assert!(arr.iter().all(|k| k["status"] == "active"));

    let revoked = ws.ok_json(&["key", "revoke", &id2])?;
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["changed"], true);
    let again = ws.ok(&["key", "revoke", &id2])?;
    assert!(again.stdout.contains("already revoked"), "{}", again.stdout);
    let unknown = ws.run(&["key", "revoke", "key_nope"])?;
    assert_eq!(unknown.code, 1);

    let status = ws.ok_json(&["status"])?;
    assert_eq!(status["pools"][0]["keys"]["active"], 1);
    assert_eq!(status["pools"][0]["keys"]["revoked"], 1);

    let unknown_pool = ws.run(&["key", "create", "--pool", "ghost"])?;
    assert_eq!(unknown_pool.code, 1);
    assert!(unknown_pool.stdout.is_empty());
    Ok(())
}

#[test]
fn status_and_account_state_changes_never_print_tokens() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let a = Login::new("acct-a", "a@example.com", "plus", "aaa");
    let b = Login::new("acct-b", "b@example.com", "team", "bbb");
    for (n, l) in [("a.json", &a), ("b.json", &b)] {
        let p = ws.write_auth(n, &l.auth_json())?;
        ws.ok(&[
            "account",
            "import",
            p.to_str().ok_or("path")?,
            "--pool",
            "main",
        ])?;
    }
    let paused = ws.ok_json(&["account", "pause", "a@example.com"])?;
    assert_eq!(paused["state"], "paused");
    assert_eq!(paused["changed"], true);
    let again = ws.ok(&["account", "pause", "a@example.com"])?;
    assert!(again.stdout.contains("already paused"), "{}", again.stdout);

    let status = ws.ok_json(&["status"])?;
    let text = status.to_string();
    assert_no_secrets(&text, &a);
    assert_no_secrets(&text, &b);
    let accounts = status["pools"][0]["accounts"]
        .as_array()
        .ok_or("accounts")?;
    assert_eq!(accounts.len(), 2);
    let by_label = |l: &str| accounts.iter().find(|x| x["label"] == l).cloned();
    let acc_a = by_label("a@example.com").ok_or("a missing")?;
    assert_eq!(acc_a["state"], "paused");
    assert_eq!(acc_a["chatgpt_account_id"], "acct-a");
    assert_eq!(acc_a["plan"], "plus");
    assert_eq!(acc_a["priority"], 0);
    assert_eq!(acc_a["weight"], 1);
    assert!(status["revision"].as_i64().is_some_and(|r| r > 1));

    let plain = ws.ok(&["status"])?;
    assert_no_secrets(&plain.stdout, &a);
    assert!(plain.stdout.contains("a@example.com") && plain.stdout.contains("paused"));
    assert!(plain.stdout.contains("acct-b") && plain.stdout.contains("team"));
    assert!(
        plain.stdout.contains("in "),
        "expiry shown: {}",
        plain.stdout
    );

    let resumed = ws.ok_json(&["account", "resume", "a@example.com"])?;
    assert_eq!(resumed["state"], "active");
    let id_b = by_label("b@example.com").ok_or("b")?["id"]
        .as_str()
        .ok_or("id")?
        .to_owned();
    let removed = ws.ok_json(&["account", "remove", &id_b])?;
    assert_eq!(removed["removed"], true);
    let after: Value = ws.ok_json(&["account", "list"])?;
    assert_eq!(after.as_array().map(Vec::len), Some(1));
    let missing = ws.run(&["account", "pause", "nobody"])?;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("no account"), "{}", missing.stderr);
    Ok(())
}

#[test]
fn settings_errors_are_clear() -> TestResult {
    let ws = Workspace::new()?;
    let r = ws
        .command()
        .env("CODEXMESH_GRPC_LISTEN", "not-an-address")
        .args(["status"])
        .output()?;
    let r = kit::Run::from(r);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("CODEXMESH_GRPC_LISTEN"), "{}", r.stderr);

    let cfg = ws.path().join("cm.toml");
    std::fs::write(&cfg, "change_poll_ms = 50\nbogus = 1\n")?;
    let r = ws.run(&["--config", cfg.to_str().ok_or("path")?, "status"])?;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("bogus"), "{}", r.stderr);

    // Secrets cannot be given as flags.
    let r = ws.run(&["--push-token", "x", "status"])?;
    assert_eq!(r.code, 2);
    Ok(())
}

#[test]
fn envoy_bootstrap_writes_a_file() -> TestResult {
    let ws = Workspace::new()?;
    let out = ws.path().join("envoy").join("bootstrap.yaml");
    let r = ws.ok_json(&[
        "envoy-bootstrap",
        "--out",
        out.to_str().ok_or("path")?,
        "--node-id",
        "node-1",
    ])?;
    assert_eq!(r["node_id"], "node-1");
    assert!(out.is_file());
    let r = ws.run(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "envoy-bootstrap",
        "--out",
        out.to_str().ok_or("path")?,
    ])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    Ok(())
}

/// Several control-plane replicas, as a comma list or the flag repeated, become endpoints of
/// the one control-plane cluster; one bad address refuses the whole command.
#[test]
fn envoy_bootstrap_takes_several_control_planes() -> TestResult {
    let ws = Workspace::new()?;
    let out = ws.path().join("bootstrap.yaml");
    let out_arg = out.to_str().ok_or("path")?;
    let endpoints = |yaml: &str| -> Vec<String> {
        let at = yaml.find("- name: codexmesh_control_plane").unwrap_or(0);
        yaml[at..]
            .lines()
            .take_while(|l| !l.contains("typed_extension_protocol_options"))
            .filter(|l| l.contains("socket_address"))
            .map(|l| l.trim().to_owned())
            .collect()
    };
    let want = [
        "socket_address: { address: \"127.0.0.1\", port_value: 18090 }",
        "socket_address: { address: \"127.0.0.2\", port_value: 18091 }",
    ];
    for args in [
        vec!["--control-plane", "127.0.0.1:18090,127.0.0.2:18091"],
        vec![
            "--control-plane",
            "127.0.0.1:18090",
            "--control-plane",
            "127.0.0.2:18091",
        ],
    ] {
        let mut full = vec!["envoy-bootstrap", "--out", out_arg];
        full.extend(args.iter().copied());
        ws.ok_json(&full)?;
        assert_eq!(endpoints(&std::fs::read_to_string(&out)?), want, "{args:?}");
    }
    let r = ws.run(&[
        "envoy-bootstrap",
        "--out",
        out_arg,
        "--control-plane",
        "127.0.0.1:18090,no port",
    ])?;
    assert_ne!(r.code, 0, "a bad replica address must be refused");
    assert!(r.stderr.contains("no port"), "{}", r.stderr);
    Ok(())
}

/// `--egress-proxy` (a comma list or repeated) renders one set of clusters per proxy, canonical
/// and without duplicates, and replaces the setting; a bad URL, from the flag or the setting,
/// refuses the command naming the value and the rule, and writes nothing.
#[test]
fn envoy_bootstrap_takes_egress_proxies_and_refuses_bad_ones() -> TestResult {
    let ws = Workspace::new()?;
    let out = ws.path().join("bootstrap.yaml");
    let out_arg = out.to_str().ok_or("path")?;
    ws.ok_json(&[
        "envoy-bootstrap",
        "--out",
        out_arg,
        "--egress-proxy",
        "HTTP://Proxy.Internal:3128/,http://10.0.0.5:8080",
        "--egress-proxy",
        "http://proxy.internal:3128",
    ])?;
    let yaml = std::fs::read_to_string(&out)?;
    for want in [
        "- name: codexmesh_egress_proxy_e1",
        "socket_address: { address: \"proxy.internal\", port_value: 3128 }",
        "- name: codexmesh_egress_proxy_e2",
        "socket_address: { address: \"10.0.0.5\", port_value: 8080 }",
    ] {
        assert!(yaml.contains(want), "missing {want:?}");
    }
    assert!(
        !yaml.contains("codexmesh_egress_proxy_e3"),
        "a duplicate got clusters"
    );
    std::fs::remove_file(&out)?;
    let r = ws.run(&[
        "envoy-bootstrap",
        "--out",
        out_arg,
        "--egress-proxy",
        "http://user:pw@proxy:3128",
    ])?;
    assert_ne!(r.code, 0, "a proxy with credentials must be refused");
    assert!(
        r.stderr.contains("--egress-proxy") && r.stderr.contains("http://HOST:PORT"),
        "{}",
        r.stderr
    );
    let r: kit::Run = ws
        .command()
        .args(["envoy-bootstrap", "--out", out_arg])
        .env("CODEXMESH_ENVOY_EGRESS_PROXIES", "socks5://proxy:1080")
        .output()?
        .into();
    assert_ne!(r.code, 0, "a bad envoy_egress_proxies must be refused");
    assert!(
        r.stderr.contains("CODEXMESH_ENVOY_EGRESS_PROXIES")
            && r.stderr.contains("socks5://proxy:1080"),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "a refused command wrote the bootstrap");
    Ok(())
}
