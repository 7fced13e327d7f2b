//! The operator dashboard in a real browser (Debian's Chromium driven by npm `playwright-core`,
//! both installed by `scripts/setup.sh --test`) against a real gateway: the simulator, `serve`
//! and Envoy.
//!
//! `dev_stack` (ignored; run it by name with `--ignored --nocapture`) starts the same stack with
//! an owner and a little traffic and holds it for `CODEXMESH_DEV_HOLD_SECS` (default 1800), for
//! working on the dashboard's files by hand.

use std::time::{Duration, Instant};

use codexmesh_test_kit::{Stack, StackOptions, POOL};
use serde_json::json;

const OWNER: &str = "owner";
const OWNER_PASSWORD: &str = "correct horse battery staple";

/// Creates the first owner through the printed-secret bootstrap, as a person would.
async fn bootstrap_owner(stack: &Stack) {
    let secret = stack.cp.cli_json(&["operator", "bootstrap"]).unwrap()["secret"]
        .as_str()
        .expect("a bootstrap secret")
        .to_owned();
    let admin = stack.cp.admin_addr.expect("admin address");
    let resp = stack
        .http
        .post(format!("http://{admin}/api/v1/bootstrap"))
        .json(&json!({"secret": secret, "name": OWNER, "password": OWNER_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "bootstrap: {}",
        resp.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a development aid that holds a stack open; run it by name"]
async fn dev_stack() {
    let stack = Stack::start_with(StackOptions::accounts(3)).await.unwrap();
    bootstrap_owner(&stack).await;
    let admin = stack.cp.admin_addr.expect("admin address");
    println!("dashboard: http://{admin}/ui/  (sign in as {OWNER} / {OWNER_PASSWORD})");
    println!(
        "gateway:   http://{}  pool {POOL} key {}",
        stack.envoy.listen, stack.key
    );
    println!("simulator: {}", stack.sim.base_url());
    let hold: u64 = std::env::var("CODEXMESH_DEV_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    let until = Instant::now() + Duration::from_secs(hold);
    while Instant::now() < until {
        let _ = stack.turn(&stack.key).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
