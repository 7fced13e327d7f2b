//! The admin listener's network rules against the real `serve`: `admin_allowed_cidrs` refuses
//! addresses outside it (API, dashboard; `/healthz` stays open for probes), the client address
//! comes from `X-Forwarded-For` only when the TCP peer is in `admin_trusted_proxies` (walked
//! from the right), and the sign-in throttle and the audit log key on that address. Also the
//! pools' `allowed_cidrs`: set through the CLI and the API, refused with a field path when bad,
//! shown in pool JSON. Everything runs on loopback: the peer is always 127.0.0.1, so
//! "refused" is an allowlist of 10.0.0.0/8 and "a proxy" is trusting 127.0.0.1/32.

use codexmesh_test_kit::cli::{Cli, Run, Workspace};
use codexmesh_test_kit::serve::Served;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type AnyError = Box<dyn std::error::Error>;

const PASSWORD: &str = "correct horse battery staple";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(served: &Served) -> Result<Self, AnyError> {
        Ok(Self {
            base: format!("http://{}", served.admin_addr()?),
            http: reqwest::Client::new(),
        })
    }

    /// One request, with `X-Forwarded-For` values (each its own header line) and a bearer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        forwarded_for: &[&str],
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), AnyError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for value in forwarded_for {
            req = req.header("x-forwarded-for", *value);
        }
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn get(
        &self,
        path: &str,
        forwarded_for: &[&str],
        bearer: &str,
    ) -> Result<(StatusCode, Value), AnyError> {
        self.send(Method::GET, path, forwarded_for, Some(bearer), None)
            .await
    }

    async fn sign_in(
        &self,
        forwarded_for: &[&str],
        name: &str,
        password: &str,
    ) -> Result<StatusCode, AnyError> {
        let body = json!({"name": name, "password": password});
        Ok(self
            .send(
                Method::POST,
                "/api/v1/session",
                forwarded_for,
                None,
                Some(body),
            )
            .await?
            .0)
    }
}

fn owner_token(ws: &Workspace) -> Result<String, AnyError> {
    codexmesh_test_kit::leaks::remember(PASSWORD);
    let v = ws.ok_json(&[
        "operator", "token", "create", "--label", "root", "--role", "owner",
    ])?;
    Ok(v["secret"].as_str().ok_or("no secret")?.to_owned())
}

fn refused(status: StatusCode, body: &Value, client: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["kind"], "forbidden", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(client) && message.contains("admin_allowed_cidrs"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_allowlist_refuses_addresses_outside_it() -> TestResult {
    let ws = Workspace::new()?;
    let owner = owner_token(&ws)?;

    // Only 10.0.0.0/8 may call; the loopback peer is refused, whatever it forwards.
    let served = Served::start(&ws, &["--admin-allowed-cidrs", "10.0.0.0/8"])?;
    let api = Api::new(&served)?;
    let (status, body) = api.get("/api/v1/pools", &[], &owner).await?;
    refused(status, &body, "127.0.0.1");
    let (status, body) = api.get("/api/v1/pools", &["10.1.2.3"], &owner).await?;
    refused(status, &body, "127.0.0.1");
    let (status, body) = api.get("/ui/", &[], &owner).await?;
    refused(status, &body, "127.0.0.1");
    let (status, body) = api.get("/api/v1/openapi.json", &[], &owner).await?;
    refused(status, &body, "127.0.0.1");
    // Probes come from the node, wherever that is.
    let (status, _) = api.send(Method::GET, "/healthz", &[], None, None).await?;
    assert_eq!(status, StatusCode::OK);
    served.stop()?;

    // Behind a trusted proxy (127.0.0.1), its X-Forwarded-For names the client.
    let served = Served::start(
        &ws,
        &[
            "--admin-allowed-cidrs",
            "10.0.0.0/8",
            "--admin-trusted-proxies",
            "127.0.0.1/32",
        ],
    )?;
    let api = Api::new(&served)?;
    let (status, body) = api.get("/api/v1/pools", &["10.1.2.3"], &owner).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.get("/api/v1/pools", &["203.0.113.9"], &owner).await?;
    refused(status, &body, "203.0.113.9");
    // Walked from the right: the client's own claim on the left is never believed.
    let (status, body) = api
        .get("/api/v1/pools", &["10.1.2.3, 203.0.113.9"], &owner)
        .await?;
    refused(status, &body, "203.0.113.9");
    let (status, body) = api
        .get("/api/v1/pools", &["10.1.2.3", "203.0.113.9"], &owner)
        .await?;
    refused(status, &body, "203.0.113.9");
    // A malformed hop stops at the last trusted one: the proxy itself, not allowed.
    let (status, body) = api
        .get("/api/v1/pools", &["10.1.2.3, unknown"], &owner)
        .await?;
    refused(status, &body, "127.0.0.1");
    // The proxy without a header is the client itself.
    let (status, body) = api.get("/api/v1/pools", &[], &owner).await?;
    refused(status, &body, "127.0.0.1");

    // The audit log records the client the rule decided.
    ws.ok(&["pool", "create", "team"])?;
    let (status, body) = api
        .send(
            Method::PATCH,
            "/api/v1/pools/team/network",
            &["10.9.8.7"],
            Some(&owner),
            Some(json!({"allowed_cidrs": ["192.168.0.0/16"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, audit) = api
        .get(
            "/api/v1/audit?action=pool.set_network",
            &["10.9.8.7"],
            &owner,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let rows = audit.as_array().ok_or("not a list")?;
    assert_eq!(rows.len(), 1, "{audit}");
    assert_eq!(rows[0]["client"], "10.9.8.7", "{audit}");
    served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_throttle_keys_on_the_decided_client_address() -> TestResult {
    let ws = Workspace::new()?;
    let owner = owner_token(&ws)?;
    let wrong = "wrong password 12345";

    // No trusted proxy: a forwarded address is ignored, so spoofing a new one per attempt
    // does not escape the address lock of the real peer.
    let served = Served::start(&ws, &[])?;
    let api = Api::new(&served)?;
    let (status, body) = api
        .send(
            Method::POST,
            "/api/v1/operators",
            &[],
            Some(&owner),
            Some(
                json!({"name": "bob@x.test", "role": "viewer", "pools": [], "password": PASSWORD}),
            ),
        )
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut locked_after = None;
    for i in 0..30 {
        let spoofed = format!("198.51.100.{i}");
        let status = api
            .sign_in(&[&spoofed], &format!("guess{i}@x.test"), wrong)
            .await?;
        if status == StatusCode::TOO_MANY_REQUESTS {
            locked_after = Some(i);
            break;
        }
    }
    assert_eq!(locked_after, Some(20), "the real address locks after 20");
    assert_eq!(
        api.sign_in(&["192.0.2.200"], "bob@x.test", PASSWORD)
            .await?,
        StatusCode::TOO_MANY_REQUESTS
    );
    served.stop()?;

    // Behind a trusted proxy each client has its own lock: one locked client does not lock
    // out another (nor the proxy's own address, already locked above, unlock anyone).
    let served = Served::start(&ws, &["--admin-trusted-proxies", "127.0.0.1/32"])?;
    let api = Api::new(&served)?;
    let mut locked = false;
    for i in 0..30 {
        let status = api
            .sign_in(&["203.0.113.7"], &format!("again{i}@x.test"), wrong)
            .await?;
        if status == StatusCode::TOO_MANY_REQUESTS {
            locked = true;
            break;
        }
    }
    assert!(locked, "203.0.113.7 never locked");
    assert_eq!(
        api.sign_in(&["203.0.113.7"], "bob@x.test", PASSWORD)
            .await?,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        api.sign_in(&["203.0.113.8"], "bob@x.test", PASSWORD)
            .await?,
        StatusCode::OK
    );
    // Without the header, the client is the proxy's own address, locked in the first part.
    assert_eq!(
        api.sign_in(&[], "bob@x.test", PASSWORD).await?,
        StatusCode::TOO_MANY_REQUESTS
    );
    served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_allowed_cidrs_are_set_checked_and_shown() -> TestResult {
    let ws = Workspace::new()?;
    let owner = owner_token(&ws)?;
    ws.ok(&["pool", "create", "team"])?;

    // The CLI: repeatable flags replace the list, canonical; no flags only print it.
    let v = ws.ok_json(&[
        "pool",
        "set-network",
        "team",
        "--allow-cidr",
        "10.0.0.0/8",
        "--allow-cidr",
        "::ffff:192.168.1.1",
    ])?;
    assert_eq!(v["changed"], true, "{v}");
    assert_eq!(v["allowed_cidrs"], json!(["10.0.0.0/8", "192.168.1.1/32"]));
    let v = ws.ok_json(&["pool", "set-network", "team"])?;
    assert_eq!(v["changed"], false, "{v}");
    let shown = ws.ok(&["pool", "set-network", "team"])?.stdout;
    assert!(shown.contains("10.0.0.0/8, 192.168.1.1/32"), "{shown}");
    // A bad CIDR is a usage error naming it, and changes nothing.
    let out = ws.run(&["pool", "set-network", "team", "--allow-cidr", "10.1.2.3/8"])?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("10.0.0.0/8"), "{}", out.stderr);
    let list = ws.ok_json(&["pool", "list"])?;
    assert_eq!(
        list[0]["allowed_cidrs"],
        json!(["10.0.0.0/8", "192.168.1.1/32"]),
        "{list}"
    );

    let served = Served::start(&ws, &[])?;
    let api = Api::new(&served)?;
    // The API: a bad entry names its position; nothing is written.
    let (status, body) = api
        .send(
            Method::PATCH,
            "/api/v1/pools/team/network",
            &[],
            Some(&owner),
            Some(json!({"allowed_cidrs": ["2001:db8::/32", "not-an-address"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "allowed_cidrs[1]", "{body}");
    let (status, body) = api
        .send(
            Method::PATCH,
            "/api/v1/pools/team/network",
            &[],
            Some(&owner),
            Some(json!({"allowed": []})),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, pool) = api.get("/api/v1/pools/team", &[], &owner).await?;
    assert_eq!(status, StatusCode::OK, "{pool}");
    assert_eq!(
        pool["allowed_cidrs"],
        json!(["10.0.0.0/8", "192.168.1.1/32"]),
        "{pool}"
    );
    let (status, body) = api
        .send(
            Method::PATCH,
            "/api/v1/pools/team/network",
            &[],
            Some(&owner),
            Some(json!({"allowed_cidrs": ["2001:db8::/32"]})),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["allowed_cidrs"], json!(["2001:db8::/32"]));
    let (_, overview) = api.get("/api/v1/overview", &[], &owner).await?;
    assert_eq!(
        overview["pools"][0]["allowed_cidrs"],
        json!(["2001:db8::/32"]),
        "{overview}"
    );
    served.stop()?;

    // `--clear-allowed-cidrs` admits any address again.
    let v = ws.ok_json(&["pool", "set-network", "team", "--clear-allowed-cidrs"])?;
    assert_eq!(v["allowed_cidrs"], json!([]), "{v}");
    Ok(())
}

#[test]
fn invalid_network_settings_stop_serve_with_a_clear_error() -> TestResult {
    let ws = Workspace::new()?;
    for (flag, bad) in [
        ("--admin-allowed-cidrs", "10.0.0.0/8,10.0.0.300"),
        ("--admin-trusted-proxies", "proxy.internal"),
        ("--gateway-trusted-proxies", "192.168.1.1/16"),
    ] {
        let out = ws.run(&["serve", "--admin-listen", "127.0.0.1:0", flag, bad])?;
        assert_ne!(out.code, 0, "{flag} {bad}: {out:?}");
        assert!(
            out.stderr.contains(flag) && out.stderr.contains("CIDR")
                || out.stderr.contains("write the network"),
            "{flag}: {}",
            out.stderr
        );
    }
    let out = Run::from(
        ws.command()
            .env("CODEXMESH_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, nope")
            .args(["serve", "--admin-listen", "127.0.0.1:0"])
            .output()?,
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("CODEXMESH_GATEWAY_TRUSTED_PROXIES") && out.stderr.contains("nope"),
        "{}",
        out.stderr
    );
    Ok(())
}
