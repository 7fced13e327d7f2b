//! Connection-level failure injection over real HTTP: an injected reset closes the connection
//! with a TCP RST before any answer byte (seen on a raw socket), the `flap` knob cycles an
//! account through resets and 429s by the clock, and the simulator keeps serving afterwards.

// An integration-test crate: clippy.toml's allow-*-in-tests reaches only `#[test]` functions and
// `#[cfg(test)]` items, not this file's helper functions, which fail the test like an assert.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use codexmesh_sim::{start, RunningSim};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn turn_body() -> Value {
    json!({
        "model": "gpt-5.1-codex",
        "instructions": "t",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "store": false,
        "stream": true,
    })
}

async fn control(http: &reqwest::Client, sim: &RunningSim, path: &str, body: Value) -> u16 {
    http.post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// One turn on a raw socket: the bytes of the answer and how the read ended.
async fn raw_turn(sim: &RunningSim, token: &str) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let body = turn_body().to_string();
    let request = format!(
        "POST /backend-api/codex/responses HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        sim.addr,
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(sim.addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
            Err(_) => panic!("no answer and no reset within 5 s: {got:?}"),
            Ok(Ok(0)) => break None,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(18).any(|w| w == b"response.completed") {
                    break None;
                }
            }
            Ok(Err(e)) => break Some(e.kind()),
        }
    };
    (got, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_come_before_any_byte_and_flaps_follow_the_clock() {
    let sim = start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = reqwest::Client::new();
    let account: Value = http
        .post(format!("{}/__sim/accounts", sim.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = account["access_token"].as_str().unwrap().to_owned();
    let id = account["account_id"].as_str().unwrap().to_owned();

    // A queued reset: RST, and not one byte of an answer.
    let queued = json!({"fail_next": [{"mode": "reset", "account_id": id}]});
    assert_eq!(control(&http, &sim, "/__sim/behavior", queued).await, 200);
    let (got, ended) = raw_turn(&sim, &token).await;
    assert!(got.is_empty(), "bytes before the reset: {got:?}");
    assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset));
    // The next turn is served.
    let (got, ended) = raw_turn(&sim, &token).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(ended, None);

    // A flap held on `reset` for this account, then on `rate_limited`.
    let flap = |step: &str| json!({"flap": {"account_ids": [id.clone()], "cycle": [step], "step_ms": 60_000}});
    assert_eq!(
        control(&http, &sim, "/__sim/behavior", flap("reset")).await,
        200
    );
    let (got, ended) = raw_turn(&sim, &token).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(
        control(&http, &sim, "/__sim/behavior", flap("rate_limited")).await,
        200
    );
    let resp = http
        .post(format!("{}/backend-api/codex/responses", sim.base_url()))
        .bearer_auth(&token)
        .json(&turn_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");

    // Bad flaps are refused; `null` ends the flapping.
    for bad in [
        json!({"flap": {"account_ids": [id.clone()], "cycle": [], "step_ms": 100}}),
        json!({"flap": {"account_ids": [id.clone()], "cycle": ["ok"], "step_ms": 0}}),
        json!({"flap": {"account_ids": [id.clone()], "cycle": ["sometimes"], "step_ms": 100}}),
    ] {
        let status = control(&http, &sim, "/__sim/behavior", bad.clone()).await;
        assert!((400..500).contains(&status), "{bad}: {status}");
    }
    assert_eq!(
        control(&http, &sim, "/__sim/behavior", json!({"flap": null})).await,
        200
    );
    let (got, _) = raw_turn(&sim, &token).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // The request log records each reset as a 502 that never reached the wire.
    let log: Value = http
        .get(format!("{}/__sim/requests", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = log
        .as_array()
        .cloned()
        .or_else(|| log["requests"].as_array().cloned())
        .unwrap();
    let resets = entries
        .iter()
        .filter(|r| r["path"] == "/backend-api/codex/responses" && r["status"] == 502)
        .count();
    assert_eq!(resets, 2, "{entries:?}");
    sim.shutdown().await.unwrap();
}
