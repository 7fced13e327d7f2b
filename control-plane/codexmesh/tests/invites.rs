//! Invites ("friends mode", issue 15) against the real `serve` and store, and through the CLI:
//! an operator creates one, a person redeems it on the open API the invite page calls and gets
//! a key that the admin API then lists; reuse past the count, a revoked invite and wrong codes
//! are refused (wrong codes until the address is throttled); every step is audited without
//! the code or the key; `codexmesh invite create|list|revoke` and its input errors.

use codexmesh_test_kit::cli::{Cli, Workspace};
use codexmesh_test_kit::serve::Served;
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn api_token(
    ws: &Workspace,
    label: &str,
    role: &str,
    pools: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut args = vec![
        "operator", "token", "create", "--label", label, "--role", role,
    ];
    if !pools.is_empty() {
        args.extend(["--pools", pools]);
    }
    Ok(ws.ok_json(&args)?["secret"]
        .as_str()
        .ok_or("no secret")?
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_is_redeemed_once_per_use_and_refused_after() -> TestResult {
    use reqwest::Method;
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "friends"])?;
    ws.ok(&["pool", "create", "other"])?;
    let owner = api_token(&ws, "owner-bot", "owner", "")?;
    let viewer = api_token(&ws, "viewer-bot", "viewer", "friends")?;
    let served = Served::start(&ws, &[])?;
    let base = format!("http://{}", served.admin_addr()?);
    let http = reqwest::Client::new();

    // The open page: HTML with the dashboard's CSP, its script among the dashboard's assets.
    let page = http.get(format!("{base}/invite")).send().await?;
    assert_eq!(page.status().as_u16(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await?.contains("/ui/assets/invite.js"));
    let script = http
        .get(format!("{base}/ui/assets/invite.js"))
        .send()
        .await?;
    assert_eq!(script.status().as_u16(), 200);
    assert!(script.text().await?.contains("/invites/redeem"));

    // A viewer may not create one; an operator may (the code and link shown this once).
    let create = json!({"label": "team", "max_uses": 2, "expires_in_secs": 3600,
                        "policy": {"allowed_models": ["gpt-5*"], "requests_per_minute": 20}});
    let url = format!("{base}/api/v1/pools/friends/invites");
    let (code, answer) = call(&http, Method::POST, &url, Some(&viewer), Some(&create)).await?;
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = call(
        &http,
        Method::POST,
        &url,
        Some(&owner),
        Some(&json!({"max_uses": 0})),
    )
    .await?;
    assert_eq!(
        (code, answer["error"]["field"].as_str()),
        (400, Some("max_uses")),
        "{answer}"
    );
    let (code, created) = call(&http, Method::POST, &url, Some(&owner), Some(&create)).await?;
    assert_eq!(code, 201, "{created}");
    let invite_code = created["code"].as_str().ok_or("no code")?.to_owned();
    assert!(invite_code.starts_with("cmi_"));
    assert_eq!(created["link"], format!("{base}/invite#code={invite_code}"));
    assert_eq!(created["invite"]["uses_left"], 2);
    assert_eq!(created["invite"]["status"], "active");
    assert_eq!(created["invite"]["policy"]["requests_per_minute"], 20);

    // The list shows metadata, never the code.
    let (code, listed) = call(
        &http,
        Method::GET,
        &format!("{base}/api/v1/invites"),
        Some(&viewer),
        None,
    )
    .await?;
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed[0]["label"], "team");
    assert!(!listed.to_string().contains(&invite_code[4..]));

    // Redeemed without signing in: a key of one's own, which the API then lists.
    let redeem = format!("{base}/api/v1/invites/redeem");
    let (code, alice) = call(
        &http,
        Method::POST,
        &redeem,
        None,
        Some(&json!({"code": invite_code, "name": "alice"})),
    )
    .await?;
    assert_eq!(code, 201, "{alice}");
    let secret = alice["secret"].as_str().ok_or("no secret")?.to_owned();
    assert!(secret.starts_with("cmk_"), "{alice}");
    assert_eq!(alice["key"]["pool"], "friends");
    let (_, keys) = call(
        &http,
        Method::GET,
        &format!("{base}/api/v1/keys?pool=friends"),
        Some(&owner),
        None,
    )
    .await?;
    let listed_key = keys
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["id"] == alice["key"]["id"]))
        .ok_or("the redeemed key is not listed")?;
    assert_eq!(listed_key["label"], "alice");
    assert_eq!(listed_key["status"], "active");
    assert!(!keys.to_string().contains(&secret));

    // The second use, then refused: used up.
    let (code, bob) = call(
        &http,
        Method::POST,
        &redeem,
        None,
        Some(&json!({"code": invite_code, "name": "bob"})),
    )
    .await?;
    assert_eq!(code, 201, "{bob}");
    let (code, answer) = call(
        &http,
        Method::POST,
        &redeem,
        None,
        Some(&json!({"code": invite_code, "name": "carol"})),
    )
    .await?;
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("used as often")),
        "{answer}"
    );

    // Revoked: refused.
    let (_, second) = call(
        &http,
        Method::POST,
        &url,
        Some(&owner),
        Some(&json!({"label": "second"})),
    )
    .await?;
    let second_code = second["code"].as_str().ok_or("no code")?.to_owned();
    let revoke = format!(
        "{base}/api/v1/invites/{}",
        second["invite"]["id"].as_str().ok_or("no id")?
    );
    let (code, answer) = call(&http, Method::DELETE, &revoke, Some(&viewer), None).await?;
    assert_eq!(code, 403, "{answer}");
    let (code, answer) = call(&http, Method::DELETE, &revoke, Some(&owner), None).await?;
    assert_eq!(
        (code, answer["changed"].as_bool()),
        (200, Some(true)),
        "{answer}"
    );
    let (code, answer) = call(
        &http,
        Method::POST,
        &redeem,
        None,
        Some(&json!({"code": second_code, "name": "dave"})),
    )
    .await?;
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{answer}"
    );

    // Audited: who redeemed, which key; never a code or a key.
    let (_, audit) = call(
        &http,
        Method::GET,
        &format!("{base}/api/v1/audit?action=invite.&limit=100"),
        Some(&owner),
        None,
    )
    .await?;
    let text = audit.to_string();
    for needle in [&invite_code[4..], &second_code[4..], &secret[4..]] {
        assert!(
            !text.contains(needle),
            "a secret reached the audit log: {text}"
        );
    }
    let rows = audit.as_array().ok_or("audit is not a list")?;
    let redeemed = rows
        .iter()
        .find(|r| {
            r["action"] == "invite.redeem" && r["actor"] == "invite:alice" && r["outcome"] == "ok"
        })
        .ok_or("no redemption row for alice")?;
    assert!(
        redeemed["detail"]
            .as_str()
            .is_some_and(|d| d.contains(alice["key"]["id"].as_str().unwrap_or("?"))),
        "{redeemed}"
    );
    for action in ["invite.create", "invite.revoke"] {
        assert!(
            rows.iter()
                .any(|r| r["action"] == action && r["outcome"] == "ok"),
            "no {action} row"
        );
    }
    assert!(rows
        .iter()
        .any(|r| r["action"] == "invite.redeem" && r["outcome"] == "conflict"));

    // Wrong codes count as failed attempts of this address: locked after 20, then even a valid
    // code waits (429).
    let (_, third) = call(&http, Method::POST, &url, Some(&owner), Some(&json!({}))).await?;
    let third_code = third["code"].as_str().ok_or("no code")?.to_owned();
    for i in 0..20 {
        let (code, answer) = call(
            &http,
            Method::POST,
            &redeem,
            None,
            Some(&json!({"code": format!("cmi_{i:0>40}"), "name": "guesser"})),
        )
        .await?;
        assert_eq!(code, 404, "guess {i}: {answer}");
    }
    let (code, answer) = call(
        &http,
        Method::POST,
        &redeem,
        None,
        Some(&json!({"code": third_code, "name": "late"})),
    )
    .await?;
    assert_eq!(code, 429, "{answer}");
    assert_eq!(answer["error"]["kind"], "rate_limited");
    served.stop()?;
    Ok(())
}

#[test]
fn the_cli_creates_lists_and_revokes_invites() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "friends"])?;
    let created = ws.ok_json(&[
        "invite",
        "create",
        "--pool",
        "friends",
        "--uses",
        "3",
        "--expires",
        "2h",
        "--label",
        "pals",
        "--allowed-models",
        "gpt-5*",
    ])?;
    let code = created["code"].as_str().ok_or("no code")?;
    assert!(code.starts_with("cmi_"), "{created}");
    assert!(
        created["link"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/invite#code={code}"))),
        "{created}"
    );
    assert_eq!(created["max_uses"], 3);
    assert_eq!(created["policy"]["allowed_models"][0], "gpt-5*");

    let plain = ws.ok(&["invite", "create", "--pool", "friends"])?;
    assert!(
        plain.stdout.trim().contains("/invite#code=cmi_"),
        "{}",
        plain.stdout
    );
    assert!(plain.stderr.contains("shown only once"), "{}", plain.stderr);

    let list = ws.ok(&["invite", "list"])?;
    assert!(
        list.stdout.contains("pals") && list.stdout.contains("3/3"),
        "{}",
        list.stdout
    );
    assert!(!list.stdout.contains(code), "{}", list.stdout);

    let revoked = ws.ok(&["invite", "revoke", "pals"])?;
    assert!(
        revoked.stdout.contains("revoked invite"),
        "{}",
        revoked.stdout
    );
    let again = ws.ok(&["invite", "revoke", "pals"])?;
    assert!(again.stdout.contains("already revoked"), "{}", again.stdout);
    let listed = ws.ok_json(&["invite", "list", "--pool", "friends"])?;
    let pals = listed
        .as_array()
        .and_then(|l| l.iter().find(|i| i["label"] == "pals"))
        .ok_or("pals not listed")?;
    assert_eq!(pals["status"], "revoked");

    // Bad input: a message naming the flag, a non-zero exit, nothing written.
    for (args, needle) in [
        (
            vec!["invite", "create", "--pool", "friends", "--expires", "soon"],
            "--expires",
        ),
        (
            vec!["invite", "create", "--pool", "friends", "--uses", "0"],
            "max_uses",
        ),
        (
            vec!["invite", "create", "--pool", "friends", "--rpm", "0"],
            "--rpm",
        ),
        (
            vec!["invite", "create", "--pool", "nope"],
            "no pool named \"nope\"",
        ),
        (vec!["invite", "revoke", "nope"], "no invite"),
    ] {
        let r = ws.run(&args)?;
        assert_ne!(r.code, 0, "{args:?} succeeded");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    assert_eq!(
        ws.ok_json(&["invite", "list"])?.as_array().map(Vec::len),
        Some(2)
    );
    Ok(())
}
