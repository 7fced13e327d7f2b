//! Snapshot ACK/NACK through real Envoy, the built wasm module and `codexmesh serve` on its
//! store: the filter ACKs each snapshot it applies and `status` and the admin API show the acked
//! version equal to the newest; a snapshot the filter must reject (a routing value out of range,
//! written with SQL into the test's own SQLite store, where no CLI or API would let it in) is
//! NACKed with the reason, and the Envoy keeps serving on the version it had (the same write
//! also pauses the only account, which would have stopped traffic had it been applied); once the
//! data is fixed the next version is ACKed and applied.

use std::time::Duration;

use codexmesh_test_kit::wait::{self, Probe};
use codexmesh_test_kit::{Stack, StackOptions, POOL};
use serde_json::Value;

/// The node id the kit gives the stack's Envoy (`envoy-bootstrap --node-id`).
const NODE: &str = "envoy";

async fn api(stack: &Stack, token: &str, path: &str) -> Value {
    let admin = stack.cp.admin_addr.expect("admin address");
    let resp = stack
        .http
        .get(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.json().await.unwrap()
}

async fn envoy_view(stack: &Stack, token: &str) -> Value {
    let list = api(stack, token, "/api/v1/envoys").await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["node_id"] == NODE && e["connected"] == true)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Runs `sql` (statements separated by `;`) in one transaction on the stack's SQLite store,
/// moving the store revision as every store write does, so `serve` builds a new snapshot.
async fn write_sql(stack: &Stack, statements: &[&str]) {
    let url = format!("{}?mode=rw", stack.cp.env.store);
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        .execute(&mut *tx)
        .await
        .unwrap();
    for s in statements {
        sqlx::query(s).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    db.close().await;
}

fn revision(stack: &Stack) -> u64 {
    stack.cp.cli_json(&["status"]).unwrap()["revision"]
        .as_u64()
        .unwrap()
}

/// Waits until the status of `NODE` satisfies `done` (bounded); returns it.
async fn until_status(stack: &Stack, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait::until_async(
        Duration::from_secs(20),
        Duration::from_millis(100),
        what,
        || async {
            let status = stack.cp.cli_json(&["status"])?;
            let node = status["envoys"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["node_id"] == NODE))
                .cloned()
                .unwrap_or(Value::Null);
            Ok(if done(&node) {
                Probe::Ready(node)
            } else {
                Probe::NotYet(format!("{status}"))
            })
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_snapshot_is_nacked_and_the_envoy_keeps_the_one_it_had() {
    let stack = Stack::start_with(StackOptions::accounts(1).without_quota_polling())
        .await
        .unwrap();
    let token = stack
        .cp
        .cli_json(&[
            "operator", "token", "create", "--label", "acks", "--role", "owner",
        ])
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    // Normal snapshots are ACKed: status and the API show the newest version.
    let newest = revision(&stack);
    let node = until_status(&stack, "the newest snapshot to be ACKed", |n| {
        n["acked_version"].as_u64() >= Some(newest) && n["sync"] == "in_sync"
    })
    .await;
    assert_eq!(node["last_rejection"], Value::Null, "{node}");
    let good = node["acked_version"].as_u64().unwrap();
    let view = envoy_view(&stack, &token).await;
    assert!(view["acked_version"].as_u64() >= Some(good), "{view}");
    assert_eq!(view["nacked_version"], Value::Null, "{view}");

    // A snapshot the filter must reject: max_attempts 50 (the filter serves at most 10). The
    // same write pauses the only account: applied, it would answer 503 from then on.
    write_sql(
        &stack,
        &[
            &format!("UPDATE pools SET max_attempts = 50 WHERE name = '{POOL}'"),
            "UPDATE accounts SET state = 'paused'",
        ],
    )
    .await;
    let bad = revision(&stack);
    assert!(bad > good);
    // Later versions (health scores move with traffic) carry the same bad row: >=.
    let node = until_status(&stack, "the bad snapshot to be NACKed", |n| {
        n["last_rejection"]["version"].as_u64() >= Some(bad)
    })
    .await;
    let good = node["acked_version"].as_u64().unwrap();
    assert!(good < bad, "{node}");
    let reason = node["last_rejection"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("routing.max_attempts is 50"),
        "the reason names the field and value: {reason}"
    );
    assert_eq!(node["acked_version"].as_u64(), Some(good), "{node}");
    assert_eq!(node["sync"], "behind", "{node}");
    let view = envoy_view(&stack, &token).await;
    assert!(view["nacked_version"].as_u64() >= Some(bad), "{view}");
    assert_eq!(view["acked_version"].as_u64(), Some(good), "{view}");
    assert!(
        view["nack_reason"]
            .as_str()
            .unwrap()
            .contains("routing.max_attempts is 50"),
        "{view}"
    );
    let human = stack.cp.cli(&["status"]).unwrap().stdout;
    let row = human
        .lines()
        .find(|l| l.starts_with(NODE) && l.contains("behind"))
        .unwrap_or_else(|| panic!("no behind row for {NODE}: {human}"));
    assert!(row.contains(&format!("v{good} (")), "{row}");
    assert!(row.contains("routing.max_attempts is 50"), "{row}");

    // The Envoy keeps serving on the version it had: the paused account still serves, and the
    // outcomes it reports were served with the good version.
    for _ in 0..3 {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let view = wait::until_async(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "outcomes of the turns to be reported",
        || async {
            let view = envoy_view(&stack, &token).await;
            Ok(if view["reported_at_ms"].is_number() {
                Probe::Ready(view)
            } else {
                Probe::NotYet(view.to_string())
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(view["running_version"].as_u64(), Some(good), "{view}");
    let log = stack.envoy.proc.log_text();
    assert!(
        log.contains(&format!("rejected snapshot v{bad}")),
        "the Envoy logs the rejection"
    );

    // Fixed data: the next version is ACKed and applied (the pause now takes effect).
    write_sql(
        &stack,
        &[&format!(
            "UPDATE pools SET max_attempts = 3 WHERE name = '{POOL}'"
        )],
    )
    .await;
    let fixed = revision(&stack);
    let node = until_status(&stack, "the fixed snapshot to be ACKed", |n| {
        n["acked_version"].as_u64() >= Some(fixed) && n["sync"] == "in_sync"
    })
    .await;
    let last_bad = node["last_rejection"]["version"].as_u64().unwrap();
    assert!(
        (bad..fixed).contains(&last_bad),
        "the last rejection stays shown: {node}"
    );
    let view = envoy_view(&stack, &token).await;
    assert!(view["acked_version"].as_u64() >= Some(fixed), "{view}");
    let (status, body) = stack.turn(&stack.key).await.unwrap();
    assert_eq!(status, 503, "the paused account is out now: {body}");
    stack.cp.cli_json(&["account", "resume", "acct-0"]).unwrap();
    stack
        .wait_until_serving(&stack.key, Duration::from_secs(10))
        .await
        .unwrap();
}

/// The webhook deliveries a loopback receiver heard: (signature header, JSON body).
type Heard = std::sync::Arc<tokio::sync::Mutex<Vec<(String, Value)>>>;

/// A minimal HTTP/1.1 receiver on 127.0.0.1:0 (one request per connection: it answers 200 with
/// `connection: close`); returns its URL. Ends with the test's runtime.
async fn webhook_receiver(heard: Heard) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let heard = heard.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Bounded: a delivery is small.
                while buf.len() < 1 << 20 {
                    let n = match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(&format!("{name}:")))
                            .map(|v| v.trim().to_owned())
                    };
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body: Value =
                        serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                    let signature = header("x-codexmesh-signature").unwrap_or_default();
                    heard.lock().await.push((signature, body));
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    format!("http://{addr}/hook")
}

/// The `envoy_not_acking` deliveries heard so far, as (state, subject).
async fn not_acking(heard: &Heard) -> Vec<(String, String, String)> {
    heard
        .lock()
        .await
        .iter()
        .filter(|(_, body)| body["kind"] == "envoy_not_acking")
        .map(|(sig, body)| {
            (
                body["state"].as_str().unwrap_or_default().to_owned(),
                body["subject"].as_str().unwrap_or_default().to_owned(),
                sig.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_that_stops_acknowledging_fires_one_alert_and_it_clears() {
    let mut opts = StackOptions::accounts(1).without_quota_polling();
    opts.cp_env.extend([
        ("CODEXMESH_ALERT_INTERVAL_MS".to_owned(), "200".to_owned()),
        ("CODEXMESH_ALERT_ENVOY_LAG_SECS".to_owned(), "1".to_owned()),
    ]);
    let stack = Stack::start_with(opts).await.unwrap();
    let heard: Heard = Default::default();
    let url = webhook_receiver(heard.clone()).await;
    let added = stack
        .cp
        .cli_json(&["alert", "webhook", "add", "acks-hook", "--url", &url])
        .unwrap();
    let secret = added["secret"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("whsec_"), "{added}");
    let newest = revision(&stack);
    until_status(&stack, "the newest snapshot to be ACKed", |n| {
        n["acked_version"].as_u64() >= Some(newest) && n["sync"] == "in_sync"
    })
    .await;

    // The Envoy stops acknowledging: every version from now on is one the filter must reject.
    write_sql(
        &stack,
        &[&format!(
            "UPDATE pools SET max_attempts = 50 WHERE name = '{POOL}'"
        )],
    )
    .await;
    let fired = wait::until_async(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "an envoy_not_acking alert to be delivered",
        || async {
            let got = not_acking(&heard).await;
            Ok(if got.is_empty() {
                Probe::NotYet(format!("{:?}", heard.lock().await))
            } else {
                Probe::Ready(got)
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(fired[0].0, "firing");
    assert_eq!(fired[0].1, NODE, "the alert names the Envoy");
    assert!(
        fired[0].2.starts_with("t=") && fired[0].2.contains(",v1="),
        "the delivery is signed: {:?}",
        fired[0].2
    );
    // The condition holds for several more evaluations: still one delivery.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(not_acking(&heard).await.len(), 1, "fired once per episode");

    // Fixed: the Envoy acknowledges again and the episode clears, once.
    write_sql(
        &stack,
        &[&format!(
            "UPDATE pools SET max_attempts = 3 WHERE name = '{POOL}'"
        )],
    )
    .await;
    let cleared = wait::until_async(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the envoy_not_acking alert to be resolved",
        || async {
            let got = not_acking(&heard).await;
            Ok(if got.len() >= 2 {
                Probe::Ready(got)
            } else {
                Probe::NotYet(format!("{got:?}"))
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(cleared[1].0, "resolved");
    assert_eq!(cleared[1].1, NODE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(not_acking(&heard).await.len(), 2, "resolved once");
    // No secret in any delivery.
    let all = format!("{:?}", heard.lock().await);
    assert!(!all.contains(&secret) && !all.contains(&stack.key), "{all}");
}
