//! `/metrics`, `/readyz` and `/healthz` of the real `serve`: who may scrape (a caller whose
//! access covers every pool; 401 without one, 403 for a narrower one), what a scrape shows
//! (pools and accounts by name, reported traffic moving the counters, never a token), and
//! readiness following the store (PostgreSQL stopped under a running server: 503, while
//! liveness stays 200).

use std::time::Duration;

use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_client::MeshClient;
use codexmesh_test_kit::auth::Login;
use codexmesh_test_kit::cli::{Cli, Workspace};
use codexmesh_test_kit::pg::TempPostgres;
use codexmesh_test_kit::serve::Served;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn token(ws: &Workspace, label: &str, role: &str, pools: Option<&str>) -> Result<String, String> {
    let mut args = vec![
        "operator", "token", "create", "--label", label, "--role", role,
    ];
    if let Some(p) = pools {
        args.extend(["--pools", p]);
    }
    let created = ws.ok_json(&args).map_err(|e| e.to_string())?;
    created["secret"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no secret in {created}"))
}

/// GET `path` with an optional bearer token: status, content type and body.
async fn get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String, String), reqwest::Error> {
    let mut req = http.get(format!("{base}{path}"));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((status, ct, resp.text().await?))
}

/// The value of the sample line that starts with `series` (name and labels, as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_caller_that_sees_every_pool_and_follow_reports() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "alpha"])?;
    ws.ok(&["pool", "create", "beta"])?;
    let imported = ws.import_auth(
        "a1.json",
        &Login::new("acct-1", "a1@x.test", "plus", "a1").auth_json(),
        "alpha",
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
    let owner = token(&ws, "prom", "owner", None)?;
    let viewer_all = token(&ws, "prom-viewer", "viewer", Some("alpha,beta"))?;
    let admin_alpha = token(&ws, "alpha-admin", "admin", Some("alpha"))?;
    let served = Served::start(&ws, &[])?;
    let base = format!("http://{}", served.admin_addr()?);
    let http = reqwest::Client::new();

    // No caller: 401 in the API's error shape; a wrong token too.
    for bearer in [None, Some("cma_wrong")] {
        let (status, _, body) = get(&http, &base, "/metrics", bearer).await?;
        assert_eq!(status, 401, "{body}");
        let body: Value = serde_json::from_str(&body)?;
        assert_eq!(body["error"]["kind"], "unauthenticated", "{body}");
    }
    // A caller that does not see every pool: 403, and nothing of the metrics.
    let (status, _, body) = get(&http, &base, "/metrics", Some(&admin_alpha)).await?;
    assert_eq!(status, 403, "{body}");
    let parsed: Value = serde_json::from_str(&body)?;
    assert_eq!(parsed["error"]["kind"], "forbidden", "{parsed}");
    assert!(!body.contains("codexmesh_"), "{body}");

    // An owner, and a viewer assigned to every pool, may.
    for who in [&owner, &viewer_all] {
        let (status, ct, text) = get(&http, &base, "/metrics", Some(who)).await?;
        assert_eq!(status, 200, "{text}");
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
    let (_, _, before) = get(&http, &base, "/metrics", Some(&owner)).await?;
    assert_eq!(
        sample(
            &before,
            r#"codexmesh_accounts{pool="alpha",state="active"}"#
        ),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, r#"codexmesh_accounts{pool="beta",state="active"}"#),
        Some(0.0),
        "{before}"
    );
    assert!(sample(&before, "codexmesh_snapshot_version").is_some_and(|v| v > 0.0));
    assert_eq!(sample(&before, "codexmesh_envoys_connected"), Some(0.0));

    // An Envoy subscribes and reports a 429, then the failover that served the request.
    let push = std::fs::read_to_string(ws.data_dir().join("push.token"))?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {}", push.trim()).parse()?;
    let mut client = MeshClient::connect(format!("http://{}", served.grpc)).await?;
    let mut subscribe = tonic::Request::new(pb::SubscribeRequest {
        node_id: "metrics-node".into(),
        known_version: 0,
        client_build: "test".into(),
        egress_proxies: Vec::new(),
    });
    subscribe
        .metadata_mut()
        .insert("authorization", bearer.clone());
    let mut stream = client.subscribe(subscribe).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await??;
    assert!(first.is_some(), "the stream starts with a snapshot");
    let outcome = |attempt: u32, status: u32, fallback: bool| pb::Outcome {
        pool_id: pool_id.clone(),
        key_id: "key_test".into(),
        account_id: account_id.clone(),
        attempt,
        status,
        fallback,
        error_source: if status == 429 {
            "upstream".into()
        } else {
            String::new()
        },
        started_at_unix_ms: now_ms() - 50,
        latency_ms: 40,
        request_path: "/backend-api/codex/responses".into(),
        snapshot_version: 1,
        ..Default::default()
    };
    let mut report = tonic::Request::new(pb::ReportBatch {
        node_id: "metrics-node".into(),
        outcomes: vec![outcome(1, 429, false), outcome(2, 200, true)],
        ..Default::default()
    });
    report.metadata_mut().insert("authorization", bearer);
    assert_eq!(client.report(report).await?.into_inner().accepted, 2);

    let (_, _, after) = get(&http, &base, "/metrics", Some(&viewer_all)).await?;
    let series = |outcome: &str| {
        format!(
            r#"codexmesh_requests_total{{pool="alpha",account="a1",account_id="{account_id}",outcome="{outcome}"}}"#
        )
    };
    assert_eq!(
        sample(&after, &series("rate_limited")),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, &series("success")), Some(1.0), "{after}");
    assert_eq!(sample(&after, &series("transport")), Some(0.0), "{after}");
    assert_eq!(
        sample(
            &after,
            &format!(
                r#"codexmesh_failovers_total{{pool="alpha",account="a1",account_id="{account_id}"}}"#
            )
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "codexmesh_envoys_connected"),
        Some(1.0),
        "{after}"
    );
    assert!(
        sample(
            &after,
            r#"codexmesh_envoy_snapshot_version{node="metrics-node",kind="sent"}"#
        )
        .is_some_and(|v| v > 0.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"codexmesh_envoy_snapshot_version{node="metrics-node",kind="running"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert!(sample(&after, "codexmesh_snapshot_pushes_total").is_some_and(|v| v >= 1.0));
    // Labels are names and ids: never a token of any kind.
    for secret in [owner.as_str(), viewer_all.as_str(), push.trim()] {
        assert!(!after.contains(secret));
    }
    assert!(!after.contains("access_token"), "{after}");

    // Liveness and readiness are open and carry no tenant data.
    let (status, _, body) = get(&http, &base, "/healthz", None).await?;
    assert_eq!(status, 200, "{body}");
    let (status, ct, body) = get(&http, &base, "/readyz", None).await?;
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(serde_json::from_str::<Value>(&body)?["status"], "ready");
    assert!(!body.contains("alpha"), "{body}");
    drop(stream);
    served.stop()?;
    drop(ws);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_store_while_liveness_stays() -> TestResult {
    let Some(pg) = TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let mut ws = Workspace::new()?;
    ws.store_override = Some(pg.url.clone());
    ws.ok(&["pool", "create", "main"])?;
    let served = Served::start(&ws, &[])?;
    let base = format!("http://{}", served.admin_addr()?);
    let http = reqwest::Client::new();
    let (status, _, body) = get(&http, &base, "/readyz", None).await?;
    assert_eq!(status, 200, "{body}");

    // The store goes away under the running server.
    drop(pg);
    let (status, _, body) =
        tokio::time::timeout(Duration::from_secs(10), get(&http, &base, "/readyz", None)).await??;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!(body["status"], "not_ready", "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "store_unavailable" || reason == "store_timeout",
        "{body}"
    );
    let (status, _, _) = get(&http, &base, "/healthz", None).await?;
    assert_eq!(status, 200, "liveness does not depend on the store");
    drop(served);
    drop(ws);
    Ok(())
}
