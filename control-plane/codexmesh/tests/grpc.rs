//! `codexmesh serve` as a process, spoken to with the generated tonic client.

use std::time::{Duration, Instant};

use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_client::MeshClient;
use codexmesh_test_kit::{
    http_get, http_get_with, AnyError, Cli, Login, Served, TestResult, Workspace,
};
use tonic::transport::Channel;
use tonic::Streaming;

async fn client(grpc: &str) -> Result<MeshClient<Channel>, AnyError> {
    Ok(MeshClient::connect(format!("http://{grpc}")).await?)
}

fn with_token<T>(msg: T, token: Option<&str>) -> Result<tonic::Request<T>, AnyError> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(req)
}

fn subscribe_req() -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        node_id: "test-node".into(),
        known_version: 0,
        client_build: "grpc-test".into(),
        egress_proxies: Vec::new(),
    }
}

/// Next message within `within`, or an error.
async fn next(
    stream: &mut Streaming<pb::SubscribeResponse>,
    within: Duration,
) -> Result<pb::subscribe_response::Kind, AnyError> {
    let msg = tokio::time::timeout(within, stream.message())
        .await
        .map_err(|_| format!("no message within {within:?}"))??
        .ok_or("stream ended")?;
    msg.kind.ok_or_else(|| "empty SubscribeResponse".into())
}

/// Skips heartbeats until a snapshot arrives (bounded by `within` overall).
async fn next_snapshot(
    stream: &mut Streaming<pb::SubscribeResponse>,
    within: Duration,
) -> Result<pb::Snapshot, AnyError> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(stream, left).await? {
            pb::subscribe_response::Kind::Snapshot(s) => return Ok(s),
            pb::subscribe_response::Kind::Heartbeat(_) => continue,
        }
    }
}

fn push_token(ws: &Workspace) -> Result<String, AnyError> {
    Ok(std::fs::read_to_string(ws.data_dir().join("push.token"))?
        .trim()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_report_and_restart() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let login = Login::new("acct-grpc", "g@example.com", "plus", "grpc");
    let imported = ws.import_auth("auth.json", &login.auth_json(), "main", None)?;
    let account_id = imported["account"]["id"].as_str().ok_or("id")?.to_owned();
    let key = ws.ok_json(&["key", "create", "--pool", "main"])?;
    let revoked_key = ws.ok_json(&["key", "create", "--pool", "main", "--name", "old"])?;
    ws.ok(&["key", "revoke", revoked_key["id"].as_str().ok_or("id")?])?;

    let api_token = ws.ok_json(&[
        "operator", "token", "create", "--label", "t", "--role", "owner",
    ])?["secret"]
        .as_str()
        .ok_or("no secret")?
        .to_owned();
    let served = Served::start(&ws, &["--heartbeat-interval-ms", "300"])?;
    let token = push_token(&ws)?;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ws.data_dir().join("push.token"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut c = client(&served.grpc).await?;

    // Wrong or missing token: UNAUTHENTICATED, for both RPCs.
    for t in [Some("wrong-token"), None, Some("")] {
        let err = c
            .subscribe(with_token(subscribe_req(), t)?)
            .await
            .err()
            .ok_or("subscribe with a bad token succeeded")?;
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{t:?}");
        let err = c
            .report(with_token(pb::ReportBatch::default(), t)?)
            .await
            .err()
            .ok_or("report with a bad token succeeded")?;
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    // Right token: the first message is the full snapshot, with the decrypted token.
    let mut stream = c
        .subscribe(with_token(subscribe_req(), Some(&token))?)
        .await?
        .into_inner();
    let first = match next(&mut stream, Duration::from_secs(5)).await? {
        pb::subscribe_response::Kind::Snapshot(s) => s,
        other => return Err(format!("first message was not a snapshot: {other:?}").into()),
    };
    assert!(first.version > 1);
    assert!(!first.control_plane_id.is_empty());
    let pool = first
        .pools
        .iter()
        .find(|p| p.name == "main")
        .ok_or("pool main")?;
    // New pools get the product default; unset numbers travel as 0 (= the filter's default).
    assert_eq!(
        pool.routing,
        Some(pb::RoutingSettings {
            strategy: pb::Strategy::QuotaFirst as i32,
            max_attempts: 3,
            ..Default::default()
        })
    );
    assert!(pool.keys.iter().all(|k| k.routing_override.is_none()));
    let acc = pool.accounts.first().ok_or("no account in snapshot")?;
    assert_eq!(acc.id, account_id);
    assert_eq!(acc.chatgpt_account_id, "acct-grpc");
    assert_eq!(acc.access_token, login.access_token);
    assert_eq!(acc.state, pb::AccountState::Active as i32);
    assert_eq!(acc.plan, "plus");
    assert_eq!(acc.health, 100);
    assert_eq!(acc.access_token_expires_at_unix, login.exp);
    assert_eq!(pool.keys.len(), 2);
    let raw = key["key"].as_str().ok_or("key")?;
    let active = pool
        .keys
        .iter()
        .find(|k| k.id == key["id"].as_str().unwrap_or_default())
        .ok_or("active key missing")?;
    use sha2::Digest;
    assert_eq!(
        active.key_hash,
        sha2::Sha256::digest(raw.as_bytes()).to_vec()
    );
    assert_eq!(active.status, pb::KeyStatus::Active as i32);
    assert!(pool
        .keys
        .iter()
        .any(|k| k.label == "old" && k.status == pb::KeyStatus::Revoked as i32));

    // Idle: heartbeats carry the current version.
    match next(&mut stream, Duration::from_secs(3)).await? {
        pb::subscribe_response::Kind::Heartbeat(h) => {
            assert_eq!(h.version, first.version);
            assert!(h.sent_at_unix_ms > 0);
        }
        other => return Err(format!("expected a heartbeat, got {other:?}").into()),
    }

    // A change from another process reaches the subscriber within 1 s.
    ws.ok(&["key", "create", "--pool", "main", "--name", "new"])?;
    let changed_at = Instant::now();
    let second = next_snapshot(&mut stream, Duration::from_secs(1)).await?;
    let latency = changed_at.elapsed();
    assert!(latency <= Duration::from_secs(1), "took {latency:?}");
    assert!(second.version > first.version);
    assert!(second.pools[0].keys.iter().any(|k| k.label == "new"));

    // Pausing shows up as state, not as absence.
    ws.ok(&["account", "pause", &account_id])?;
    let third = next_snapshot(&mut stream, Duration::from_secs(1)).await?;
    assert!(third.version > second.version);
    assert_eq!(
        third.pools[0].accounts[0].state,
        pb::AccountState::Paused as i32
    );

    // Routing changes from the CLI reach the subscriber: the pool's settings, and an override
    // only on the key that has its own.
    ws.ok(&[
        "pool",
        "set-routing",
        "main",
        "--strategy",
        "primary_first",
        "--primary",
        "g@example.com",
        "--primary-threshold",
        "90",
        "--circuit-open-ms",
        "5000",
    ])?;
    let routed = next_snapshot(&mut stream, Duration::from_secs(1)).await?;
    assert_eq!(
        routed.pools[0].routing,
        Some(pb::RoutingSettings {
            strategy: pb::Strategy::PrimaryFirst as i32,
            max_attempts: 3,
            primary_threshold_percent: 90.0,
            circuit_open_ms: 5000,
            primary_account_id: account_id.clone(),
            ..Default::default()
        })
    );
    let key_id = key["id"].as_str().ok_or("key id")?;
    ws.ok(&["key", "set-routing", key_id, "--strategy", "round_robin"])?;
    let overridden = next_snapshot(&mut stream, Duration::from_secs(1)).await?;
    for k in &overridden.pools[0].keys {
        if k.id == key_id {
            // A copy of the pool's settings with the one change.
            assert_eq!(
                k.routing_override,
                Some(pb::RoutingSettings {
                    strategy: pb::Strategy::RoundRobin as i32,
                    ..routed.pools[0].routing.clone().unwrap_or_default()
                })
            );
        } else {
            assert_eq!(k.routing_override, None, "{}", k.label);
        }
    }

    // Report stores metadata and says how many.
    let outcome = pb::Outcome {
        pool_id: pool.id.clone(),
        key_id: active.id.clone(),
        account_id: account_id.clone(),
        attempt: 1,
        status: 200,
        started_at_unix_ms: 1,
        latency_ms: 5,
        request_path: "/backend-api/codex/responses?x=1".into(),
        snapshot_version: third.version,
        strategy: "primary_first".into(),
        route_reason: format!("failover\n{}", "x".repeat(1000)),
        quota: Some(pb::QuotaSummary {
            primary: Some(pb::QuotaWindow {
                used_percent: 12.5,
                window_minutes: 300,
                resets_at_unix: 2_000_000_000,
            }),
            secondary: None,
            observed_at_unix_ms: 2,
        }),
        ..Default::default()
    };
    let ack = c
        .report(with_token(
            pb::ReportBatch {
                node_id: "test-node".into(),
                outcomes: vec![outcome.clone(), outcome],
                ..Default::default()
            },
            Some(&token),
        )?)
        .await?
        .into_inner();
    assert_eq!(ack.accepted, 2);
    // The route facts are kept with the outcome, clipped like other text.
    let store = codexmesh_store::Store::open(&ws.store_url()).await?;
    let stored = store.recent_outcomes(&account_id, 5).await?;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].strategy.as_deref(), Some("primary_first"));
    let reason = stored[0].route_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("failoverxxx"), "{reason}");
    assert_eq!(reason.chars().count(), 256);
    store.close().await;

    // Admin HTTP: health and status, without secrets.
    let (code, body) = http_get(&served.admin, "/healthz")?;
    assert_eq!((code, body.trim()), (200, "ok"));
    let bearer = format!("Bearer {api_token}");
    let (code, body) = http_get_with(
        &served.admin,
        "/api/v1/status",
        &[("Authorization", bearer.as_str())],
    )?;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["pools"][0]["name"], "main");
    assert!(!body.contains(&login.access_token) && !body.contains(&login.refresh_token));
    assert!(!body.contains(raw));

    // Restart: the version never goes backwards, and the stream ends cleanly on SIGTERM.
    let last = third.version;
    drop(stream);
    let code = served.stop()?;
    assert_eq!(code, 0, "serve exits 0 on SIGTERM");
    let served = Served::start(&ws, &[])?;
    let mut c = client(&served.grpc).await?;
    let mut stream = c
        .subscribe(with_token(subscribe_req(), Some(&token))?)
        .await?
        .into_inner();
    let after = next_snapshot(&mut stream, Duration::from_secs(5)).await?;
    assert!(after.version >= last, "{} < {last}", after.version);
    assert_eq!(after.pools[0].accounts[0].access_token, login.access_token);
    drop(stream);
    assert_eq!(served.stop()?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_server_with_env_token() -> TestResult {
    use codexmesh_engine::config::{Settings, SettingsFlags};
    use codexmesh_store::{Actor, Store};

    let ws = Workspace::new()?;
    let flags = SettingsFlags {
        store: Some(ws.store_url()),
        data_dir: Some(ws.data_dir()),
        grpc_listen: Some("127.0.0.1:0".parse()?),
        admin_listen: Some("127.0.0.1:0".parse()?),
        change_poll_ms: Some(50),
        ..SettingsFlags::default()
    };
    let env = |name: &str| (name == "CODEXMESH_PUSH_TOKEN").then(|| "env-token-123".to_owned());
    let settings = Settings::resolve(&flags, &env)?;
    let store = Store::open(&settings.store).await?;
    let running = codexmesh_engine::server::start(&settings, store.clone()).await?;
    assert!(
        !ws.data_dir().join("push.token").exists(),
        "env token must not be written"
    );

    let mut c = client(&running.grpc_addr.to_string()).await?;
    let mut stream = c
        .subscribe(with_token(subscribe_req(), Some("env-token-123"))?)
        .await?
        .into_inner();
    let first = next_snapshot(&mut stream, Duration::from_secs(5)).await?;
    assert!(first.pools.is_empty());

    // An in-process write plus a nudge is picked up at once.
    store.create_pool(&Actor::new("test"), "p1").await?;
    running.nudge();
    let second = next_snapshot(&mut stream, Duration::from_secs(1)).await?;
    assert_eq!(second.pools.len(), 1);
    assert_eq!(running.snapshot_version(), second.version);

    // Shutdown ends open streams instead of waiting on them.
    running.shutdown_token().cancel();
    tokio::time::timeout(Duration::from_secs(10), running.finish()).await??;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await?;
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    Ok(())
}

#[tokio::test]
async fn the_admin_api_needs_a_principal_but_the_health_probe_does_not() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    // The old shared admin token is gone: setting it opens nothing.
    let served = Served::start_env(&ws, &[], &[("CODEXMESH_ADMIN_TOKEN", "adm-s3cret")])?;
    let (code, body) = http_get(&served.admin, "/healthz")?;
    assert_eq!((code, body.trim()), (200, "ok"));
    let created = ws.ok_json(&[
        "operator", "token", "create", "--label", "ci", "--role", "owner",
    ])?;
    let secret = created["secret"].as_str().ok_or("no secret")?.to_owned();
    for path in ["/api/v1/status", "/api/v1/requests"] {
        let (code, body) = http_get(&served.admin, path)?;
        assert_eq!(code, 401, "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(error["error"]["kind"], "unauthenticated", "{body}");
        for wrong in [
            "Bearer nope",
            "Bearer adm-s3cret",
            "Bearer cma_0000000000000000000000000000000000000000",
        ] {
            let (code, _) = http_get_with(&served.admin, path, &[("Authorization", wrong)])?;
            assert_eq!(code, 401, "{path}: {wrong}");
        }
        let bearer = format!("Bearer {secret}");
        let (code, body) =
            http_get_with(&served.admin, path, &[("Authorization", bearer.as_str())])?;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let bearer = format!("Bearer {secret}");
    let (_, body) = http_get_with(
        &served.admin,
        "/api/v1/status",
        &[("Authorization", bearer.as_str())],
    )?;
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status["pools"][0]["name"], "main");
    // The token itself is never logged.
    let log = served.log_lines("");
    assert!(log.iter().all(|l| !l.contains(&secret)));
    served.stop()?;
    Ok(())
}
