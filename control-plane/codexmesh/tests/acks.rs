//! Snapshot ACK/NACK with a real `codexmesh serve` and its store: a gRPC client plays an Envoy's
//! filter, subscribing and reporting verdicts; the admin API and `codexmesh status` (which reads
//! the store) show them, also after a restart and for nodes not connected; a reason about a pool
//! a viewer does not see is hidden from that viewer; a repeated verdict is not written again.

use std::time::Duration;

use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_client::MeshClient;
use codexmesh_test_kit::{http_get_with, AnyError, Cli, Login, Served, TestResult, Workspace};
use serde_json::Value;
use tonic::transport::Channel;

const HIDDEN: &str = "rejected for a reason concerning a pool outside your access";

async fn client(grpc: &str) -> Result<MeshClient<Channel>, AnyError> {
    Ok(MeshClient::connect(format!("http://{grpc}")).await?)
}

fn authed<T>(msg: T, token: &str) -> Result<tonic::Request<T>, AnyError> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

fn ack(version: u64) -> pb::SnapshotStatus {
    pb::SnapshotStatus {
        version,
        accepted: true,
        at_unix_ms: 1_000 + i64::try_from(version).unwrap_or(0),
        applied_version: version,
        ..Default::default()
    }
}

fn statuses(node: &str, statuses: Vec<pb::SnapshotStatus>) -> pb::ReportBatch {
    pb::ReportBatch {
        node_id: node.into(),
        snapshot_statuses: statuses,
        ..Default::default()
    }
}

fn api(served: &Served, token: &str, path: &str) -> Result<Value, AnyError> {
    let bearer = format!("Bearer {token}");
    let (code, body) = http_get_with(&served.admin, path, &[("Authorization", bearer.as_str())])?;
    assert_eq!(code, 200, "{path}: {body}");
    Ok(serde_json::from_str(&body)?)
}

fn node<'a>(list: &'a Value, id: &str) -> Result<&'a Value, AnyError> {
    list.as_array()
        .and_then(|l| l.iter().find(|n| n["node_id"] == id))
        .ok_or_else(|| format!("no node {id} in {list}").into())
}

fn token(ws: &Workspace, args: &[&str]) -> Result<String, AnyError> {
    let mut all = vec!["operator", "token", "create"];
    all.extend_from_slice(args);
    Ok(ws.ok_json(&all)?["secret"]
        .as_str()
        .ok_or("no secret")?
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_show_in_status_and_the_api() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let other = ws.ok_json(&["pool", "create", "other"])?;
    let other_id = other["id"]
        .as_str()
        .or_else(|| other["pool"]["id"].as_str())
        .ok_or_else(|| format!("no pool id in {other}"))?
        .to_owned();
    let login = Login::new("acct-acks", "a@example.com", "plus", "acks");
    ws.import_auth("auth.json", &login.auth_json(), "main", None)?;
    let owner = token(&ws, &["--label", "o", "--role", "owner"])?;
    let viewer = token(
        &ws,
        &["--label", "v", "--role", "viewer", "--pools", "main"],
    )?;

    let served = Served::start(&ws, &["--heartbeat-interval-ms", "300"])?;
    let push = std::fs::read_to_string(ws.data_dir().join("push.token"))?
        .trim()
        .to_owned();
    let mut c = client(&served.grpc).await?;
    let mut stream = c
        .subscribe(authed(
            pb::SubscribeRequest {
                node_id: "node-1".into(),
                known_version: 0,
                client_build: "acks-test".into(),
                egress_proxies: Vec::new(),
            },
            &push,
        )?)
        .await?
        .into_inner();
    let first = match tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await??
        .and_then(|m| m.kind)
    {
        Some(pb::subscribe_response::Kind::Snapshot(s)) => s,
        other => return Err(format!("first message: {other:?}").into()),
    };

    // An ACK alone (no outcomes) is a valid report.
    let answer = c
        .report(authed(statuses("node-1", vec![ack(first.version)]), &push)?)
        .await?
        .into_inner();
    assert_eq!(answer.accepted, 0);
    let listed = api(&served, &owner, "/api/v1/envoys")?;
    let n1 = node(&listed, "node-1")?;
    assert_eq!(n1["connected"], true);
    assert_eq!(n1["acked_version"], first.version);
    assert_eq!(n1["acked_at_ms"], 1_000 + i64::try_from(first.version)?);
    assert_eq!(n1["nacked_version"], Value::Null);
    assert_eq!(n1["sent_version"], first.version);

    let status = ws.ok_json(&["status"])?;
    let e = &status["envoys"][0];
    assert_eq!(e["node_id"], "node-1");
    assert_eq!(e["acked_version"], first.version);
    assert_eq!(e["sync"], "in_sync", "{status}");
    assert_eq!(e["last_rejection"], Value::Null);
    let human = ws.ok(&["status"])?.stdout;
    let row = human
        .lines()
        .find(|l| l.starts_with("node-1"))
        .ok_or_else(|| format!("no node-1 row in {human}"))?;
    assert!(row.contains(&format!("v{}", first.version)), "{row}");
    assert!(row.contains("in_sync"), "{row}");

    // A newer version exists: the node is behind until it ACKs it. It rejects it instead.
    ws.ok(&["key", "create", "--pool", "main"])?;
    let status = ws.ok_json(&["status"])?;
    let newest = status["revision"].as_u64().ok_or("revision")?;
    assert!(newest > first.version);
    assert_eq!(status["envoys"][0]["sync"], "behind");
    let reason =
        format!("pool {other_id}: routing.max_attempts is 50, expected 0 (the default) to 10");
    let nack = pb::SnapshotStatus {
        version: newest,
        accepted: false,
        error_detail: format!("{reason}\n\u{1b}[31m"),
        at_unix_ms: 5_000,
        applied_version: first.version,
        pool_id: other_id.clone(),
    };
    c.report(authed(statuses("node-1", vec![nack.clone()]), &push)?)
        .await?;
    let listed = api(&served, &owner, "/api/v1/envoys")?;
    let n1 = node(&listed, "node-1")?;
    assert_eq!(n1["acked_version"], first.version, "a NACK keeps the ACK");
    assert_eq!(n1["nacked_version"], newest);
    assert_eq!(n1["nacked_at_ms"], 5_000);
    assert_eq!(
        n1["nack_reason"],
        format!("{reason}[31m"),
        "control characters are dropped"
    );
    assert!(n1.get("nack_pool_id").is_none(), "{n1}");
    let status = ws.ok_json(&["status"])?;
    let e = &status["envoys"][0];
    assert_eq!(e["sync"], "behind");
    assert_eq!(e["last_rejection"]["version"], newest);
    assert!(
        e["last_rejection"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(&reason)),
        "{e}"
    );
    let human = ws.ok(&["status"])?.stdout;
    assert!(human.contains("routing.max_attempts is 50"), "{human}");
    assert!(human.contains(&format!("v{newest} (")), "{human}");

    // The reason concerns pool "other": a viewer of "main" only sees that there was one.
    let listed = api(&served, &viewer, "/api/v1/envoys")?;
    let n1 = node(&listed, "node-1")?;
    assert_eq!(n1["nacked_version"], newest);
    assert_eq!(n1["nack_reason"], HIDDEN);
    let as_viewer = api(&served, &viewer, "/api/v1/status")?;
    assert_eq!(as_viewer["envoys"][0]["last_rejection"]["reason"], HIDDEN);
    assert!(!as_viewer.to_string().contains(&other_id));

    // The same NACK again (a retried report) is not written (nor logged) again; a node without
    // a stream here is listed from the store, not connected.
    c.report(authed(statuses("node-1", vec![nack]), &push)?)
        .await?;
    let nack_lines = served.log_lines("rejected a snapshot (NACK)");
    assert_eq!(nack_lines.len(), 1, "{nack_lines:?}");
    c.report(authed(statuses("node-2", vec![ack(newest)]), &push)?)
        .await?;
    let listed = api(&served, &owner, "/api/v1/envoys")?;
    let n2 = node(&listed, "node-2")?;
    assert_eq!(n2["connected"], false);
    assert_eq!(n2["acked_version"], newest);

    // Bad input: too many statuses in one report, and a wrong token.
    let many = statuses("node-3", (1..=9).map(ack).collect());
    let err = c
        .report(authed(many, &push)?)
        .await
        .err()
        .ok_or("nine statuses accepted")?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .report(authed(statuses("node-3", vec![ack(1)]), "wrong")?)
        .await
        .err()
        .ok_or("a wrong token accepted")?;
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Persisted: after a restart (no stream) the API and status still show both nodes.
    drop(stream);
    served.stop()?;
    let served = Served::start(&ws, &[])?;
    let listed = api(&served, &owner, "/api/v1/envoys")?;
    let n1 = node(&listed, "node-1")?;
    assert_eq!(n1["connected"], false);
    assert_eq!(n1["acked_version"], first.version);
    assert_eq!(n1["nacked_version"], newest);
    assert!(
        node(&listed, "node-3").is_err(),
        "refused reports store nothing"
    );
    let status = ws.ok_json(&["status"])?;
    assert_eq!(status["envoys"].as_array().map(Vec::len), Some(2));
    served.stop()?;
    Ok(())
}
