//! What the dashboard's pages will read and do, against the real `serve` and the ChatGPT
//! simulator: refreshing a pool's quota now (`POST /api/v1/pools/{pool}/quota/refresh`) and
//! the pools overview (`GET /api/v1/overview`).

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
        let served = Served::start(&ws, &["--quota-poll-interval-secs", "0"])?;
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
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
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
