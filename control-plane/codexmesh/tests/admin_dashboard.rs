//! What the dashboard's pages will read and do, against the real `serve` and the ChatGPT
//! simulator: refreshing a pool's quota now (`POST /api/v1/pools/{pool}/quota/refresh`) and
//! the pools overview (`GET /api/v1/overview`), device-code logins started from the API (the
//! re-login action), the gateway address for client snippets, the dashboard's own files, and
//! the bound on open event streams.

use codexmesh_test_kit::{AnyError, Cli, Served, Sim, TestResult, Workspace};
use serde_json::{json, Value};

struct Setup {
    sim: Sim,
    ws: Workspace,
    served: Served,
    base: String,
    http: reqwest::Client,
}

impl Setup {
    /// Pools `main` (accounts `q1`, `q2` in the simulator) and `other`; the background quota
    /// poller is off, so only a refresh asks the simulator.
    async fn start() -> Result<Self, AnyError> {
        Self::start_with(&[]).await
    }

    async fn start_with(serve_args: &[&str]) -> Result<Self, AnyError> {
        let sim = Sim::start()?;
        let mut ws = Workspace::new()?;
        ws.extra_args = sim.cp_args();
        for pool in ["main", "other"] {
            ws.ok(&["pool", "create", pool])?;
        }
        for label in ["q1", "q2"] {
            let acct = sim
                .create_account(json!({"primary_limit": 100, "secondary_limit": 1000}))
                .await?;
            ws.import_auth(
                &format!("{label}.auth.json"),
                &acct["auth_json"].to_string(),
                "main",
                Some(label),
            )?;
            let id = acct["account_id"].as_str().unwrap_or_default().to_owned();
            let used = if label == "q1" { 40 } else { 60 };
            sim.patch_account(&id, json!({"primary_used": used, "secondary_used": 100}))
                .await?;
        }
        let mut args = vec!["--quota-poll-interval-secs", "0"];
        args.extend_from_slice(serve_args);
        let served = Served::start(&ws, &args)?;
        let base = format!("http://{}", served.admin_addr()?);
        Ok(Self {
            sim,
            ws,
            served,
            base,
            http: reqwest::Client::new(),
        })
    }

    fn token(&self, label: &str, role: &str, pools: &str) -> Result<String, AnyError> {
        let mut args = vec![
            "operator", "token", "create", "--label", label, "--role", role,
        ];
        if !pools.is_empty() {
            args.extend(["--pools", pools]);
        }
        let v = self.ws.ok_json(&args)?;
        Ok(v["secret"].as_str().ok_or("no secret")?.to_owned())
    }

    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> Result<(u16, Value), AnyError> {
        self.call_with(token, method, path, None).await
    }

    async fn call_with(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), AnyError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

fn row<'a>(rows: &'a Value, label: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["label"] == label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_refreshes_its_pools_quota_now_at_most_every_ten_seconds() -> TestResult {
    let s = Setup::start().await?;
    let viewer = s.token("viewer-main", "viewer", "main")?;
    let outsider = s.token("viewer-other", "viewer", "other")?;
    let (code, before) = s
        .call(&viewer, reqwest::Method::GET, "/api/v1/quota?pool=main")
        .await?;
    assert_eq!(code, 200, "{before}");
    assert!(
        row(&before, "q1").is_some_and(|r| r["primary"].is_null()),
        "no evidence before the refresh: {before}"
    );

    let path = "/api/v1/pools/main/quota/refresh";
    let (code, out) = s.call(&viewer, reqwest::Method::POST, path).await?;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["polled"], 2, "{out}");
    assert_eq!(out["failed"], 0, "{out}");
    assert_eq!(out["cooldown"], false, "{out}");
    let q1 = row(&out["accounts"], "q1").ok_or("no q1")?;
    assert_eq!(q1["primary"]["used_percent"], 40.0, "{out}");
    assert_eq!(q1["primary"]["source"], "poll");
    let q2 = row(&out["accounts"], "q2").ok_or("no q2")?;
    assert_eq!(q2["primary"]["used_percent"], 60.0, "{out}");
    assert_eq!(q2["secondary"]["used_percent"], 10.0, "{out}");
    let polls = s.sim.requests_where("path_contains=/wham/usage").await?;
    assert_eq!(polls.len(), 2, "{polls:?}");

    // Again at once: the stored evidence, no upstream call.
    let (code, again) = s.call(&viewer, reqwest::Method::POST, path).await?;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["cooldown"], true, "{again}");
    assert_eq!(again["polled"], 0);
    assert_eq!(
        again["notices"][0]["code"], "quota_refresh_recent",
        "{again}"
    );
    assert_eq!(
        row(&again["accounts"], "q1").map(|r| r["primary"]["used_percent"].clone()),
        Some(json!(40.0))
    );
    let polls = s.sim.requests_where("path_contains=/wham/usage").await?;
    assert_eq!(polls.len(), 2, "the cooldown asked the upstream: {polls:?}");

    // Another tenant's pool does not exist for this caller; no token, no refresh.
    let (code, answer) = s.call(&outsider, reqwest::Method::POST, path).await?;
    assert_eq!(code, 404, "{answer}");
    let resp = s.http.post(format!("{}{path}", s.base)).send().await?;
    assert_eq!(resp.status().as_u16(), 401);
    s.served.stop()?;
    Ok(())
}

fn pool<'a>(overview: &'a Value, name: &str) -> Option<&'a Value> {
    overview["pools"]
        .as_array()?
        .iter()
        .find(|p| p["pool"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_combines_headroom_states_and_the_last_hour() -> TestResult {
    let s = Setup::start().await?;
    let owner = s.token("owner", "owner", "")?;
    let outsider = s.token("viewer-other", "viewer", "other")?;
    let (code, before) = s
        .call(&owner, reqwest::Method::GET, "/api/v1/overview")
        .await?;
    assert_eq!(code, 200, "{before}");
    let main = pool(&before, "main").ok_or("no main")?;
    assert_eq!(main["accounts"]["active"], 2, "{before}");
    assert!(
        main["primary"]["headroom_percent"].is_null(),
        "no evidence yet is unknown, not 100 %: {before}"
    );
    assert_eq!(main["last_hour"]["requests"], 0);
    assert_eq!(main["last_hour"]["failovers"], 0);

    // Evidence (q1 40 % and q2 60 % of the 5-hour window, both 10 % of the week), and q2
    // weighs three times q1: (60 * 1 + 40 * 3) / 4 = 45 % left.
    let (code, out) = s
        .call(
            &owner,
            reqwest::Method::POST,
            "/api/v1/pools/main/quota/refresh",
        )
        .await?;
    assert_eq!(code, 200, "{out}");
    s.ws.ok(&["account", "set", "q2", "--weight", "3"])?;
    let (_, now) = s
        .call(&owner, reqwest::Method::GET, "/api/v1/overview")
        .await?;
    let main = pool(&now, "main").ok_or("no main")?;
    assert_eq!(main["primary"]["headroom_percent"], 45.0, "{now}");
    assert_eq!(main["primary"]["accounts"], 2);
    assert!(
        main["primary"]["earliest_reset_unix"].as_i64() > Some(0),
        "{now}"
    );
    assert_eq!(main["secondary"]["headroom_percent"], 90.0, "{now}");

    // A paused account leaves the mean and is counted as paused.
    s.ws.ok(&["account", "pause", "q1"])?;
    let (_, paused) = s
        .call(&owner, reqwest::Method::GET, "/api/v1/overview")
        .await?;
    let main = pool(&paused, "main").ok_or("no main")?;
    assert_eq!(main["accounts"]["active"], 1, "{paused}");
    assert_eq!(main["accounts"]["paused"], 1, "{paused}");
    assert_eq!(main["primary"]["headroom_percent"], 40.0, "{paused}");

    // Another tenant sees only its own pool.
    let (code, theirs) = s
        .call(&outsider, reqwest::Method::GET, "/api/v1/overview")
        .await?;
    assert_eq!(code, 200, "{theirs}");
    let names: Vec<&Value> = theirs["pools"]
        .as_array()
        .ok_or("no pools")?
        .iter()
        .map(|p| &p["pool"])
        .collect();
    assert_eq!(names, vec![&json!("other")], "{theirs}");
    s.served.stop()?;
    Ok(())
}

impl Setup {
    /// `POST /api/v1/pools/{pool}/logins` as `token`.
    async fn start_login(
        &self,
        token: &str,
        pool: &str,
        body: Value,
    ) -> Result<(u16, Value), AnyError> {
        let path = format!("/api/v1/pools/{pool}/logins");
        self.call_with(token, reqwest::Method::POST, &path, Some(body))
            .await
    }
}

/// Polls a login started through the API until it is no longer pending (bounded).
async fn login_outcome(s: &Setup, token: &str, id: &str) -> Result<Value, AnyError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, v) = s
            .call(token, reqwest::Method::GET, &format!("/api/v1/logins/{id}"))
            .await?;
        assert_eq!(code, 200, "{v}");
        if v["state"] != "pending" {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("the login stayed pending: {v}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_started_from_the_api_adds_or_renews_an_account() -> TestResult {
    let s = Setup::start().await?;
    let admin = s.token("admin-main", "admin", "main")?;
    let other_admin = s.token("admin-main-2", "admin", "main")?;
    let viewer = s.token("viewer-main", "viewer", "main")?;
    s.sim
        .behavior(json!({
            "device_auto_approve_after_polls": 1,
            "device_poll_interval_secs": 0,
            "device_auto_approve_as": {"account_id": "dev-acct-7", "plan": "pro",
                                       "email": "seven@example.test"}
        }))
        .await?;
    // A viewer may not add accounts; an admin may not add to a pool it does not see.
    let (code, v) = s.start_login(&viewer, "main", json!({})).await?;
    assert_eq!(code, 403, "{v}");
    let (code, v) = s.start_login(&admin, "other", json!({})).await?;
    assert_eq!(code, 404, "{v}");
    let (code, v) = s
        .start_login(&admin, "main", json!({"label": "seven", "colour": "red"}))
        .await?;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["field"], "colour", "{v}");

    let (code, started) = s
        .start_login(&admin, "main", json!({"label": "seven"}))
        .await?;
    assert_eq!(code, 202, "{started}");
    assert_eq!(started["state"], "pending");
    assert_eq!(started["pool"], "main");
    let id = started["id"].as_str().ok_or("no id")?.to_owned();
    assert!(id.starts_with("lgn_"), "{started}");
    assert!(
        started["verification_url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&s.sim.root_url()) && u.ends_with("/codex/device")),
        "{started}"
    );
    assert!(started["user_code"].as_str().is_some_and(|c| !c.is_empty()));
    let sim_logins = s
        .sim
        .call(reqwest::Method::GET, "/__sim/device", None)
        .await?;
    let device = &sim_logins["logins"][0];
    assert_eq!(device["user_code"], started["user_code"]);
    // Only whoever started it sees it.
    let (code, _) = s
        .call(
            &other_admin,
            reqwest::Method::GET,
            &format!("/api/v1/logins/{id}"),
        )
        .await?;
    assert_eq!(code, 404);

    let done = login_outcome(&s, &admin, &id).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["action"], "created", "{done}");
    let account_id = done["account_id"].as_str().ok_or("no account")?.to_owned();
    let (code, account) = s
        .call(
            &admin,
            reqwest::Method::GET,
            &format!("/api/v1/accounts/{account_id}"),
        )
        .await?;
    assert_eq!(code, 200, "{account}");
    assert_eq!(account["label"], "seven", "{account}");
    assert_eq!(account["chatgpt_account_id"], "dev-acct-7", "{account}");
    // Nothing secret in what the API said about the login.
    let said = format!("{started}{done}");
    for secret in [&device["device_auth_id"], &device["authorization_code"]] {
        if let Some(secret) = secret.as_str().filter(|v| !v.is_empty()) {
            assert!(!said.contains(secret), "{said}");
        }
    }

    // The same login again renews the account it already is (the re-login action).
    let (code, again) = s.start_login(&admin, "main", json!({})).await?;
    assert_eq!(code, 202, "{again}");
    let renewed = login_outcome(&s, &admin, again["id"].as_str().ok_or("no id")?).await?;
    assert_eq!(renewed["state"], "succeeded", "{renewed}");
    assert_eq!(renewed["action"], "updated", "{renewed}");
    assert_eq!(renewed["account_id"].as_str(), Some(account_id.as_str()));

    // Denied at the approval page: the login says so.
    s.sim.behavior(json!({"reset": true})).await?;
    s.sim
        .behavior(json!({"device_poll_interval_secs": 0}))
        .await?;
    let (code, denied) = s.start_login(&admin, "main", json!({})).await?;
    assert_eq!(code, 202, "{denied}");
    s.sim
        .call(reqwest::Method::POST, "/__sim/device/deny", Some(json!({})))
        .await?;
    let failed = login_outcome(&s, &admin, denied["id"].as_str().ok_or("no id")?).await?;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("denied")),
        "{failed}"
    );
    let audit = s.ws.ok_json(&["audit", "--action", "account.import"])?;
    assert!(
        audit.to_string().contains("token:admin-main"),
        "the import is audited as the caller: {audit}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_address_for_snippets_comes_from_the_setting() -> TestResult {
    let s = Setup::start().await?;
    let viewer = s.token("viewer-main", "viewer", "main")?;
    let (code, v) = s
        .call(&viewer, reqwest::Method::GET, "/api/v1/gateway")
        .await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"url": null}));
    drop(s);
    let s = Setup::start_with(&["--gateway-url", "https://gw.example.test:8443/"]).await?;
    let viewer = s.token("viewer-main", "viewer", "main")?;
    let (_, v) = s
        .call(&viewer, reqwest::Method::GET, "/api/v1/gateway")
        .await?;
    assert_eq!(v, json!({"url": "https://gw.example.test:8443"}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy() -> TestResult {
    let s = Setup::start().await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let root = client.get(format!("{}/", s.base)).send().await?;
    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/ui/");
    // Any route under /ui/ is the page (the script routes), with its policy.
    for path in ["/ui/", "/ui/pools/main", "/ui/accounts?pool=main"] {
        let page = client.get(format!("{}{path}", s.base)).send().await?;
        assert_eq!(page.status(), 200, "{path}");
        let csp = page.headers()["content-security-policy"]
            .to_str()?
            .to_owned();
        for rule in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(rule), "{path}: {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        assert!(page.headers()["content-type"]
            .to_str()?
            .starts_with("text/html"));
        let html = page.text().await?;
        assert!(html.contains("/ui/assets/app.js"), "{html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no outside asset"
        );
    }
    // Files revalidate by ETag; a path outside the embedded set finds nothing.
    let js = client
        .get(format!("{}/ui/assets/app.js", s.base))
        .send()
        .await?;
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()?
        .starts_with("text/javascript"));
    assert_eq!(js.headers()["cache-control"], "no-cache");
    let etag = js.headers()["etag"].clone();
    let again = client
        .get(format!("{}/ui/assets/app.js", s.base))
        .header("if-none-match", etag)
        .send()
        .await?;
    assert_eq!(again.status(), 304);
    for path in [
        "/ui/assets/../../Cargo.toml",
        "/ui/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/ui/assets/nope.js",
        "/ui/assets/index.html",
    ] {
        let r = client.get(format!("{}{path}", s.base)).send().await?;
        assert!(
            r.status() == 404 || r.status() == 200 && r.text().await?.contains("/ui/assets/app.js"),
            "{path} must find nothing outside the embedded files"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_bounded_per_replica() -> TestResult {
    let s = Setup::start().await?;
    let viewer = s.token("viewer-main", "viewer", "main")?;
    let open = |token: String, base: String| async move {
        reqwest::Client::new()
            .get(format!("{base}/api/v1/events"))
            .bearer_auth(token)
            .send()
            .await
    };
    let mut streams = Vec::new();
    for _ in 0..256 {
        let r = open(viewer.clone(), s.base.clone()).await?;
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let refused = open(viewer.clone(), s.base.clone()).await?;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["kind"], "unavailable", "{body}");
    // A client that goes away frees its place (its task notices the closed stream).
    drop(streams.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = open(viewer.clone(), s.base.clone()).await?;
        if r.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_same_overview_and_refreshes_the_same_way() -> TestResult {
    let s = Setup::start().await?;
    let owner = s.token("owner", "owner", "")?;
    let refreshed = s.ws.ok_json(&["pool", "refresh-quota", "main"])?;
    assert_eq!(refreshed["polled"], 2, "{refreshed}");
    assert_eq!(refreshed["cooldown"], false, "{refreshed}");
    // The API shares the cooldown (a store lease): nothing is polled again now.
    let (code, again) = s
        .call(
            &owner,
            reqwest::Method::POST,
            "/api/v1/pools/main/quota/refresh",
        )
        .await?;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["cooldown"], true, "{again}");
    let cli = s.ws.ok_json(&["pool", "overview"])?;
    let (_, api) = s
        .call(&owner, reqwest::Method::GET, "/api/v1/overview")
        .await?;
    let (cli_main, api_main) = (
        pool(&cli, "main").ok_or("no main in the CLI's")?,
        pool(&api, "main").ok_or("no main in the API's")?,
    );
    assert_eq!(cli_main["primary"]["headroom_percent"], 50.0, "{cli}");
    assert_eq!(cli_main["primary"], api_main["primary"]);
    assert_eq!(cli_main["accounts"], api_main["accounts"]);
    let text = s.ws.ok(&["pool", "overview"])?.stdout;
    assert!(text.contains("main") && text.contains("50%"), "{text}");
    let r = s.ws.run(&["pool", "refresh-quota", "zz-none"])?;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("zz-none"), "{}", r.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_sixteen_device_logins_wait_at_once() -> TestResult {
    let s = Setup::start().await?;
    let admin = s.token("admin-main", "admin", "main")?;
    s.sim
        .behavior(json!({"device_poll_interval_secs": 0}))
        .await?;
    let mut codes = Vec::new();
    for _ in 0..16 {
        let (code, v) = s.start_login(&admin, "main", json!({})).await?;
        assert_eq!(code, 202, "{v}");
        codes.push(v["user_code"].as_str().ok_or("no code")?.to_owned());
    }
    let (code, v) = s.start_login(&admin, "main", json!({})).await?;
    assert_eq!(code, 429, "{v}");
    assert_eq!(v["error"]["kind"], "rate_limited", "{v}");
    // One is denied at the approval page: its place frees once its task has seen it.
    s.sim
        .call(
            reqwest::Method::POST,
            "/__sim/device/deny",
            Some(json!({"user_code": codes[0]})),
        )
        .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, v) = s.start_login(&admin, "main", json!({})).await?;
        if code == 202 {
            break;
        }
        assert_eq!(code, 429, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "the denied login's place was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}
