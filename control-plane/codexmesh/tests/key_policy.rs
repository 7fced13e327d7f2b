//! Per-key policies (issue 15) through every surface on the real binary and store: the admin
//! API (`GET`/`PUT /api/v1/keys/{key}/policy`, a bad value's 400 naming `policy.<field>`,
//! another tenant's key 404, a viewer's 403), the CLI (`key policy`, `key create` flags, the
//! POLICY column, a bad flag's exit 1 naming the flag), `apply -f` (the plan shows the change;
//! applying twice writes nothing), and the audit of each change.

use codexmesh_test_kit::serve::Served;
use codexmesh_test_kit::{Cli, TestResult, Workspace};
use reqwest::Method;
use serde_json::{json, Value};

fn token(
    ws: &Workspace,
    label: &str,
    role: &str,
    pools: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let v = ws.ok_json(&[
        "operator", "token", "create", "--label", label, "--role", role, "--pools", pools,
    ])?;
    Ok(v["secret"].as_str().ok_or("no secret")?.to_owned())
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sets_reads_and_clears_a_policy_within_the_tenant() -> TestResult {
    let ws = Workspace::new()?;
    for pool in ["a", "b"] {
        ws.ok(&["pool", "create", pool])?;
        ws.ok(&[
            "key",
            "create",
            "--pool",
            pool,
            "--name",
            &format!("key-{pool}"),
        ])?;
    }
    let admin_a = token(&ws, "admin-a", "admin", "a")?;
    let viewer_a = token(&ws, "viewer-a", "viewer", "a")?;
    let served = Served::start(&ws, &[])?;
    let base = format!("http://{}", served.admin_addr()?);
    let http = reqwest::Client::new();

    let policy = json!({"allowed_models": ["gpt-5*", "o3"], "requests_per_minute": 30,
                        "tokens_per_day": 100000, "primary_share_percent": 20.0});
    let (status, reply) = call(
        &http,
        &base,
        &admin_a,
        Method::PUT,
        "/api/v1/keys/key-a/policy",
        Some(&policy),
    )
    .await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["changed"], true, "{reply}");
    assert_eq!(reply["policy"], policy, "{reply}");
    let (status, read) = call(
        &http,
        &base,
        &admin_a,
        Method::GET,
        "/api/v1/keys/key-a/policy",
        None,
    )
    .await?;
    assert_eq!((status, &read), (200, &policy));
    // The listing shows it; the same body again changes nothing.
    let (_, keys) = call(&http, &base, &admin_a, Method::GET, "/api/v1/keys", None).await?;
    assert_eq!(keys[0]["policy"], policy, "{keys}");
    let (_, again) = call(
        &http,
        &base,
        &admin_a,
        Method::PUT,
        "/api/v1/keys/key-a/policy",
        Some(&policy),
    )
    .await?;
    assert_eq!(again["changed"], false, "{again}");

    // Bad values: 400 naming the field, nothing written.
    for (body, field) in [
        (
            json!({"requests_per_minute": 0}),
            "policy.requests_per_minute",
        ),
        (
            json!({"requests_per_minute": -3}),
            "policy.requests_per_minute",
        ),
        (
            json!({"primary_share_percent": 150}),
            "policy.primary_share_percent",
        ),
        (
            json!({"allowed_models": ["ok", "b*d"]}),
            "policy.allowed_models[1]",
        ),
        (json!({"rpm": 3}), "policy.rpm"),
    ] {
        let (status, err) = call(
            &http,
            &base,
            &admin_a,
            Method::PUT,
            "/api/v1/keys/key-a/policy",
            Some(&body),
        )
        .await?;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    let (_, read) = call(
        &http,
        &base,
        &admin_a,
        Method::GET,
        "/api/v1/keys/key-a/policy",
        None,
    )
    .await?;
    assert_eq!(read, policy);

    // Another tenant's key is not there for an admin of a; a viewer may read, not change.
    let (status, _) = call(
        &http,
        &base,
        &admin_a,
        Method::PUT,
        "/api/v1/keys/key-b/policy",
        Some(&policy),
    )
    .await?;
    assert_eq!(status, 404);
    let (status, _) = call(
        &http,
        &base,
        &admin_a,
        Method::GET,
        "/api/v1/keys/key-b/policy",
        None,
    )
    .await?;
    assert_eq!(status, 404);
    let (status, _) = call(
        &http,
        &base,
        &viewer_a,
        Method::GET,
        "/api/v1/keys/key-a/policy",
        None,
    )
    .await?;
    assert_eq!(status, 200);
    let (status, _) = call(
        &http,
        &base,
        &viewer_a,
        Method::PUT,
        "/api/v1/keys/key-a/policy",
        Some(&json!({})),
    )
    .await?;
    assert_eq!(status, 403);

    // A key created with a policy; `{}` clears.
    let (status, created) = call(
        &http,
        &base,
        &admin_a,
        Method::POST,
        "/api/v1/pools/a/keys",
        Some(&json!({"label": "bot", "policy": {"max_concurrent_requests": 2}})),
    )
    .await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["key"]["policy"],
        json!({"max_concurrent_requests": 2})
    );
    let (status, cleared) = call(
        &http,
        &base,
        &admin_a,
        Method::PUT,
        "/api/v1/keys/key-a/policy",
        Some(&json!({})),
    )
    .await?;
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(cleared["policy"], Value::Null, "{cleared}");
    let (_, read) = call(
        &http,
        &base,
        &admin_a,
        Method::GET,
        "/api/v1/keys/key-a/policy",
        None,
    )
    .await?;
    assert_eq!(read, json!({}));

    // Audited: the changes, and the refused one.
    let audit = ws.ok(&["audit", "--limit", "50"])?.stdout;
    assert!(audit.matches("key.set_policy").count() >= 3, "{audit}");
    Ok(())
}

#[test]
fn cli_sets_unsets_and_clears_a_policy() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "a"])?;
    ws.ok(&[
        "key",
        "create",
        "--pool",
        "a",
        "--name",
        "ci",
        "--allowed-models",
        "gpt-5*,o3",
        "--rpm",
        "60",
        "--primary-share",
        "20%",
    ])?;
    let shown = ws.ok_json(&["key", "policy", "ci"])?;
    assert_eq!(
        shown,
        json!({"allowed_models": ["gpt-5*", "o3"], "requests_per_minute": 60, "primary_share_percent": 20.0})
    );
    let list = ws.ok(&["key", "list"])?.stdout;
    assert!(list.contains("POLICY"), "{list}");
    assert!(
        list.contains("models=gpt-5*,o3 rpm=60 share5h=20%"),
        "{list}"
    );

    let changed = ws.ok(&[
        "key",
        "policy",
        "ci",
        "--tokens-per-day",
        "5000",
        "--unset",
        "rpm",
    ])?;
    assert!(changed.stdout.contains("(changed)"), "{}", changed.stdout);
    let shown = ws.ok_json(&["key", "policy", "ci"])?;
    assert_eq!(
        shown,
        json!({"allowed_models": ["gpt-5*", "o3"], "tokens_per_day": 5000, "primary_share_percent": 20.0})
    );

    // Bad values exit 1 naming the flag and change nothing.
    for (args, flag) in [
        (vec!["--rpm", "0"], "--rpm"),
        (vec!["--rpm", "many"], "--rpm"),
        (vec!["--secondary-share", "101"], "--secondary-share"),
        (vec!["--allowed-models", "a*b"], "--allowed-models"),
        (vec!["--unset", "speed"], "--unset"),
        (vec!["--clear", "--rpm", "3"], "--clear"),
    ] {
        let mut all = vec!["key", "policy", "ci"];
        all.extend(args.iter().copied());
        let r = ws.run(&all)?;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(flag), "{args:?}: {}", r.stderr);
    }
    assert_eq!(ws.ok_json(&["key", "policy", "ci"])?, shown);

    let cleared = ws.ok(&["key", "policy", "ci", "--clear"])?;
    assert!(
        cleared.stdout.contains("policy (changed): -"),
        "{}",
        cleared.stdout
    );
    assert_eq!(ws.ok_json(&["key", "policy", "ci"])?, json!({}));
    Ok(())
}

#[test]
fn apply_plans_and_applies_a_key_policy_once() -> TestResult {
    let ws = Workspace::new()?;
    let doc = |policy: &str| {
        format!(
            "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata:\n  name: team\nspec:\n  keys:\n    - label: ci\n{policy}"
        )
    };
    let path = ws.path().join("team.yaml");
    let file = path.to_str().ok_or("path")?;
    std::fs::write(
        &path,
        doc("      policy:\n        requests_per_minute: 10\n        allowed_models: [gpt-5*]\n"),
    )?;
    let dry = ws.ok(&["apply", "-f", file, "--dry-run"])?;
    assert!(
        dry.stdout.contains("    policy.requests_per_minute: 10\n"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("    policy.allowed_models: [gpt-5*]\n"),
        "{}",
        dry.stdout
    );
    ws.ok(&["apply", "-f", file])?;
    assert_eq!(
        ws.ok_json(&["key", "policy", "ci"])?,
        json!({"allowed_models": ["gpt-5*"], "requests_per_minute": 10})
    );
    let revision = ws.ok_json(&["status"])?["revision"].clone();
    let again = ws.ok(&["apply", "-f", file])?;
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);
    assert_eq!(ws.ok_json(&["status"])?["revision"], revision);

    // A changed value is planned as that field's change; `get` states the policy.
    std::fs::write(
        &path,
        doc("      policy:\n        requests_per_minute: 20\n        allowed_models: [gpt-5*]\n"),
    )?;
    let dry = ws.ok(&["apply", "-f", file, "--dry-run"])?;
    assert!(
        dry.stdout.contains("policy.requests_per_minute: 10 → 20"),
        "{}",
        dry.stdout
    );
    assert!(
        !dry.stdout.contains("policy.allowed_models"),
        "{}",
        dry.stdout
    );
    ws.ok(&["apply", "-f", file])?;
    let got = ws.ok(&["get", "pools"])?.stdout;
    assert!(got.contains("requests_per_minute: 20"), "{got}");

    // Left out: the key has no policy any more.
    std::fs::write(&path, doc(""))?;
    ws.ok(&["apply", "-f", file])?;
    assert_eq!(ws.ok_json(&["key", "policy", "ci"])?, json!({}));

    // A bad value names the field path; nothing applied.
    std::fs::write(&path, doc("      policy:\n        tokens_per_day: 0\n"))?;
    let r = ws.run(&["apply", "-f", file])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("spec.keys[0].policy.tokens_per_day"),
        "{}",
        r.stderr
    );
    Ok(())
}
