//! The live events stream (`GET /api/v1/events`) against the real `serve`: it needs a caller,
//! starts with the current revision, tells of a change made through the API within seconds,
//! and ends when the server stops.

use std::time::Duration;

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
