//! The live events stream (`GET /api/v1/events`) against the real `serve`: it needs a caller,
//! starts with the current revision, tells of a change made through the API within seconds and
//! of outcome reports from an Envoy (which the overview then counts), and ends when the server
//! stops.

use std::time::Duration;

use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_client::MeshClient;
use codexmesh_test_kit::auth::Login;
use codexmesh_test_kit::cli::{Cli, Workspace};
use codexmesh_test_kit::serve::Served;
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The `(event, data)` pairs in `text` (complete events only; comments skipped).
fn parse_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("data:") {
                data = serde_json::from_str(v.trim()).ok();
            }
        }
        if let (Some(n), Some(d)) = (name, data) {
            out.push((n, d));
        }
    }
    out
}

/// Reads the stream until `want` holds for an event or `within` passes.
async fn wait_for(
    resp: &mut reqwest::Response,
    seen: &mut String,
    within: Duration,
    want: impl Fn(&str, &Value) -> bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let complete = match seen.rfind("\n\n") {
            Some(i) => &seen[..i + 2],
            None => "",
        };
        if parse_events(complete).iter().any(|(n, d)| want(n, d)) {
            return Ok(true);
        }
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return Ok(false),
            Ok(chunk) => match chunk? {
                Some(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(false),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_announced_to_signed_in_callers() -> TestResult {
    let ws = Workspace::new()?;
    let owner = ws.ok_json(&[
        "operator", "token", "create", "--label", "t", "--role", "owner",
    ])?;
    let token = owner["secret"].as_str().ok_or("no secret")?.to_owned();
    let served = Served::start(&ws, &[])?;
    let base = format!("http://{}", served.admin_addr()?);
    let http = reqwest::Client::new();

    let anonymous = http.get(format!("{base}/api/v1/events")).send().await?;
    assert_eq!(anonymous.status().as_u16(), 401);

    let mut resp = tokio::time::timeout(
        Duration::from_secs(5),
        http.get(format!("{base}/api/v1/events"))
            .bearer_auth(&token)
            .send(),
    )
    .await??;
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );

    // First: the revision the stream starts at.
    let mut seen = String::new();
    assert!(
        wait_for(&mut resp, &mut seen, Duration::from_secs(5), |n, d| {
            n == "change" && d["revision"].is_u64()
        })
        .await?,
        "no starting change event: {seen:?}"
    );
    let start = parse_events(&seen)
        .into_iter()
        .find(|(n, _)| n == "change")
        .and_then(|(_, d)| d["revision"].as_u64())
        .ok_or("no starting revision")?;

    // A change through the API: a change event with a newer revision within 5 s.
    let created = http
        .post(format!("{base}/api/v1/pools"))
        .bearer_auth(&token)
        .json(&json!({"name": "live"}))
        .send()
        .await?;
    assert_eq!(created.status().as_u16(), 201, "{}", created.text().await?);
    assert!(
        wait_for(&mut resp, &mut seen, Duration::from_secs(5), |n, d| {
            n == "change" && d["revision"].as_u64().is_some_and(|r| r > start)
        })
        .await?,
        "no change event after creating a pool: {seen:?}"
    );
    // Nothing but revisions and times.
    for (name, data) in parse_events(&seen) {
        assert!(name == "change" || name == "activity", "{name}");
        assert!(!data.to_string().contains("live"), "{data}");
    }

    // Shutdown ends the stream: the server exits cleanly, without waiting out its 5 s grace
    // for connections still open.
    let stopping = std::time::Instant::now();
    assert_eq!(served.stop()?, 0);
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "the open stream held the shutdown for {:?}",
        stopping.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the server");
    drop(ws);
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_announced_and_counted_in_the_overview() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let imported = ws.import_auth(
        "a1.json",
        &Login::new("acct-1", "a1@x.test", "plus", "a1").auth_json(),
        "main",
        Some("a1"),
    )?;
    let account_id = imported["account"]["id"]
        .as_str()
        .ok_or("no id")?
        .to_owned();
    let pool_id = imported["account"]["pool_id"]
        .as_str()
        .ok_or("no pool_id")?
        .to_owned();
    let owner = ws.ok_json(&[
        "operator", "token", "create", "--label", "t", "--role", "owner",
    ])?;
    let token = owner["secret"].as_str().ok_or("no secret")?.to_owned();
    let served = Served::start(&ws, &[])?;
    let base = format!("http://{}", served.admin_addr()?);
    let http = reqwest::Client::new();
    let mut resp = http
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let mut seen = String::new();
    assert!(
        wait_for(&mut resp, &mut seen, Duration::from_secs(5), |n, _| n
            == "change")
        .await?,
        "{seen:?}"
    );

    // An Envoy reports a failed attempt and the fallback that served the request.
    let push = std::fs::read_to_string(ws.data_dir().join("push.token"))?;
    let mut client = MeshClient::connect(format!("http://{}", served.grpc)).await?;
    let outcome = |attempt: u32, status: u32, fallback: bool| pb::Outcome {
        pool_id: pool_id.clone(),
        key_id: "key_test".into(),
        account_id: account_id.clone(),
        attempt,
        status,
        fallback,
        started_at_unix_ms: now_ms() - 50,
        latency_ms: 40,
        request_path: "/backend-api/codex/responses".into(),
        ..Default::default()
    };
    let mut report = tonic::Request::new(pb::ReportBatch {
        node_id: "events-test".into(),
        outcomes: vec![outcome(1, 500, false), outcome(2, 200, true)],
        ..Default::default()
    });
    report
        .metadata_mut()
        .insert("authorization", format!("Bearer {}", push.trim()).parse()?);
    let accepted = client.report(report).await?.into_inner().accepted;
    assert_eq!(accepted, 2);
    let sent_at = now_ms();
    assert!(
        wait_for(&mut resp, &mut seen, Duration::from_secs(5), |n, d| {
            n == "activity" && d["at_ms"].as_i64().is_some_and(|t| t > sent_at - 60_000)
        })
        .await?,
        "no activity event after a report: {seen:?}"
    );

    // The overview counts them.
    let overview: serde_json::Value = http
        .get(format!("{base}/api/v1/overview"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let main = overview["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pool"] == "main"))
        .ok_or("no main")?;
    assert_eq!(main["last_hour"]["requests"], 2, "{overview}");
    assert_eq!(main["last_hour"]["errors"], 1, "{overview}");
    assert_eq!(main["last_hour"]["failovers"], 1, "{overview}");
    drop(resp);
    served.stop()?;
    drop(ws);
    Ok(())
}
