//! A pool never goes dark because of the gateway's side of things: clients that hang up (before
//! the answer or mid-stream) never count against an account, and Envoy's own limits never stop a
//! failover. Through real Envoy, with the simulator as the upstream.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use codexmesh_test_kit::{turn_body, Stack, StackOptions};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

const CLIENTS: usize = 100;

async fn stack(accounts: usize) -> Stack {
    Stack::start_with(StackOptions::accounts(accounts).without_quota_polling())
        .await
        .unwrap()
}

/// Sequential turns after the storm: every one answers 200 and every account serves some.
async fn assert_every_account_serves(stack: &Stack, accounts: usize) {
    stack
        .sim
        .behavior(json!({"response_delay_ms": 0, "event_delay_ms": 0}))
        .await
        .unwrap();
    stack.sim.clear_requests().await.unwrap();
    for i in 0..10 * accounts {
        let (status, body) = stack.turn(&stack.key).await.unwrap();
        assert_eq!(status, 200, "turn {i} after the hang-ups: {body}");
    }
    let served: BTreeSet<String> = stack
        .sim
        .turn_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| r["account_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        served.len(),
        accounts,
        "every account still eligible: {served:?}"
    );
}

/// The control plane's request log once at least `n` entries match `want` (waits at most 15 s).
async fn log_with(stack: &Stack, n: usize, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = stack.cp.cli_json(&["requests", "--limit", "1000"]).unwrap();
        let entries = log.as_array().cloned().unwrap_or_default();
        if entries.iter().filter(|e| want(e)).count() >= n || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_cancelled(entry: &Value) -> bool {
    entry["error_code"].as_str() == Some("client_cancelled")
}

fn assert_no_account_failure(log: &[Value]) {
    for entry in log {
        let source = entry["error_source"].as_str().unwrap_or_default();
        assert!(
            source != "transport" && source != "upstream",
            "a hang-up was blamed on an account: {entry}"
        );
    }
}

async fn assert_health_untouched(stack: &Stack) {
    let status = stack.cp.cli_json(&["status"]).unwrap();
    let accounts = status["pools"][0]["accounts"]
        .as_array()
        .unwrap_or_else(|| panic!("no accounts in status: {status}"));
    assert!(!accounts.is_empty());
    for account in accounts {
        assert_eq!(account["health"]["failures"], 0, "{account}");
        assert_eq!(account["health"]["score"], 100, "{account}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_hanging_up_before_the_answer_leave_every_account_eligible() {
    let stack = stack(3).await;
    // The upstream takes its time: every client gives up first (Esc, Ctrl-C, a load generator
    // stopping with requests in flight).
    stack
        .sim
        .behavior(json!({"response_delay_ms": 3000}))
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let body = turn_body("hang up");
    let results = futures_util::future::join_all((0..CLIENTS).map(|i| {
        impatient
            .post(&url)
            .bearer_auth(&stack.key)
            .header("session-id", format!("hangup-{i}"))
            .json(&body)
            .send()
    }))
    .await;
    let gave_up = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(gave_up, CLIENTS, "every client hung up before its answer");

    let log = log_with(&stack, CLIENTS, is_cancelled).await;
    let cancelled = log.iter().filter(|e| is_cancelled(e)).count();
    let blamed: Vec<&Value> = log
        .iter()
        .filter(|e| !is_cancelled(e) && e["status"] != 200)
        .collect();
    assert_eq!(
        cancelled,
        CLIENTS,
        "each hang-up logged as client_cancelled; {} others, e.g. {:?}",
        blamed.len(),
        blamed.first()
    );
    assert_no_account_failure(&log);
    assert_health_untouched(&stack).await;
    assert_every_account_serves(&stack, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_hanging_up_mid_stream_leave_every_account_eligible() {
    let stack = stack(3).await;
    // A long stream: 20 deltas 100 ms apart. Each client reads its first bytes, then leaves.
    stack
        .sim
        .behavior(json!({"event_delay_ms": 100, "delta_count": 20}))
        .await
        .unwrap();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let body = turn_body("hang up mid-stream");
    let http = reqwest::Client::new();
    let firsts = futures_util::future::join_all((0..CLIENTS).map(|i| {
        let req = http
            .post(&url)
            .bearer_auth(&stack.key)
            .header("accept", "text/event-stream")
            .header("session-id", format!("midstream-{i}"))
            .json(&body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let mut stream = resp.bytes_stream();
            let first = stream.next().await.map(|c| c.map(|b| b.len()));
            // Dropping the stream here closes the connection mid-answer.
            (status, first)
        }
    }))
    .await;
    for (status, first) in &firsts {
        assert_eq!(*status, 200);
        assert!(matches!(first, Some(Ok(n)) if *n > 0), "{first:?}");
    }
    // Each attempt is reported when Envoy sees its stream end; none is blamed on an account.
    let is_hangup = |e: &Value| {
        e["status"] == 200 && e["path"].as_str() == Some("/backend-api/codex/responses")
    };
    let log = log_with(&stack, CLIENTS, is_hangup).await;
    let reported = log.iter().filter(|e| is_hangup(e)).count();
    assert!(reported >= CLIENTS, "every attempt reported: {reported}");
    assert_no_account_failure(&log);
    assert_health_untouched(&stack).await;
    assert_every_account_serves(&stack, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_simultaneous_failovers_all_succeed() {
    // acct-0 goes first and answers every turn with a slow 429: every request in flight fails
    // over at about the same moment. Envoy's default cluster allows three parallel retries; past
    // that the client would get acct-0's 429 although acct-1 is idle.
    const PARALLEL: usize = 24;
    let stack = stack(2).await;
    stack.priority_order(&["acct-0", "acct-1"]).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spent = json!({
        "status": 429,
        "account_id": stack.account_id(0),
        "body": {"error": {"type": "usage_limit_reached", "message": "x", "resets_in_seconds": 1}},
    });
    stack
        .sim
        .behavior(json!({"response_delay_ms": 600, "fail_next": vec![spent; PARALLEL]}))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = stack.envoy.url("/backend-api/codex/responses");
    let body = turn_body("failover together");
    let results = futures_util::future::join_all((0..PARALLEL).map(|_| {
        let req = http.post(&url).bearer_auth(&stack.key).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        }
    }))
    .await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let reqs = stack.sim.turn_requests().await.unwrap();
    let first_tries = reqs
        .iter()
        .filter(|r| r["account_id"].as_str() == Some(stack.account_id(0).as_str()))
        .count();
    assert!(
        first_tries >= PARALLEL / 2,
        "the failovers really were simultaneous: {first_tries} went to acct-0 first"
    );
}
