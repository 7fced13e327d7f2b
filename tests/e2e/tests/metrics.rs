//! Metrics with real traffic through the whole stack (simulator, `serve`, Envoy with the wasm
//! module): the control plane's `/metrics` and Envoy's `/stats/prometheus` move as requests,
//! failovers, 429s, refreshes, quota polls and an exhausted pool happen; and the Grafana
//! dashboard (`deploy/grafana/codexmesh.json`) queries only metrics these scrapes expose.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use codexmesh_test_kit::{Stack, StackOptions, POOL};
use serde_json::{json, Value};

/// One scrape: series (name with its labels, as printed) → value.
type Scrape = BTreeMap<String, f64>;

fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The metric names of a scrape (the part of each series before its labels).
fn names(scrape: &Scrape) -> BTreeSet<String> {
    scrape
        .keys()
        .map(|s| s.split('{').next().unwrap_or_default().to_string())
        .collect()
}

/// The value of the one series named `name` whose labels include every `labels` pair (0 when
/// there is none yet: a counter that has not moved is not printed by Envoy).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .iter()
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?}: several series");
    matching.first().copied().unwrap_or(0.0)
}

struct Scraper {
    http: reqwest::Client,
    admin: String,
    envoy_admin: String,
    token: String,
}

impl Scraper {
    async fn control_plane(&self) -> Scrape {
        let resp = self
            .http
            .get(format!("http://{}/metrics", self.admin))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        parse(&resp.text().await.unwrap())
    }

    async fn envoy(&self) -> Scrape {
        let text = self
            .http
            .get(format!("http://{}/stats/prometheus", self.envoy_admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse(&text)
    }

    /// Scrapes until `done` holds for (control plane, Envoy) (bounded: 20 s).
    async fn until(&self, what: &str, done: impl Fn(&Scrape, &Scrape) -> bool) -> (Scrape, Scrape) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (cp, envoy) = (self.control_plane().await, self.envoy().await);
            if done(&cp, &envoy) {
                return (cp, envoy);
            }
            assert!(
                Instant::now() < deadline,
                "{what} never happened:\ncontrol plane: {cp:#?}\nenvoy: {:#?}",
                envoy
                    .iter()
                    .filter(|(k, _)| k.contains("codexmesh"))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

const ENVOY_REQUESTS: &str = "codexmesh_filter_requests";
const ENVOY_FAILOVERS: &str = "codexmesh_filter_failovers";
const ENVOY_UPSTREAM_429: &str = "codexmesh_filter_upstream_429";
const ENVOY_POOL_EXHAUSTED: &str = "codexmesh_filter_pool_exhausted";
const ENVOY_KEYS_REFUSED: &str = "codexmesh_filter_keys_refused";
const POOL_LABEL: &str = "codexmesh_pool";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_traffic() {
    let stack = Stack::start_with(StackOptions {
        accounts: vec![json!({}), json!({})],
        // Every account is polled about once a second.
        cp_env: vec![("CODEXMESH_QUOTA_POLL_INTERVAL_SECS".into(), "1".into())],
        sim_behavior: None,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    stack.priority_order(&["acct-0", "acct-1"]).unwrap();
    let token = stack
        .cp
        .cli_json(&[
            "operator", "token", "create", "--label", "prom", "--role", "owner",
        ])
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let scraper = Scraper {
        http: stack.http.clone(),
        admin: stack.cp.admin_addr.expect("admin address").to_string(),
        envoy_admin: stack.envoy.admin.to_string(),
        token,
    };
    // The simulator's ids (its ChatGPT account ids): what its knobs take.
    let (sim0, sim1) = (stack.account_id(0), stack.account_id(1));
    let cp_series = |label: &str, outcome: &str, cp: &Scrape| {
        value(
            cp,
            "codexmesh_requests_total",
            &[("pool", POOL), ("account", label), ("outcome", outcome)],
        )
    };
    let pool = [(POOL_LABEL, POOL)];
    // The routing change is in the snapshot Envoy runs before anything is counted.
    let (before, envoy_before) = scraper
        .until("the priority order to reach Envoy", |cp, _| {
            let version = value(cp, "codexmesh_snapshot_version", &[]);
            value(cp, "codexmesh_envoy_snapshot_version", &[("kind", "sent")]) == version
        })
        .await;
    // (Sent is not applied yet: give the Envoy's workers a moment, as the admin API test does.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(value(&before, "codexmesh_envoys_connected", &[]), 1.0);
    assert_eq!(
        value(
            &before,
            "codexmesh_accounts",
            &[("pool", POOL), ("state", "active")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &before,
            "codexmesh_accounts",
            &[("pool", POOL), ("state", "paused")]
        ),
        0.0
    );

    // Three turns on acct-0.
    for _ in 0..3 {
        assert_eq!(stack.turn(&stack.key).await.unwrap().0, 200);
    }
    let (cp, envoy) = scraper
        .until("three successes counted", |cp, envoy| {
            cp_series("acct-0", "success", cp) >= cp_series("acct-0", "success", &before) + 3.0
                && value(envoy, ENVOY_REQUESTS, &pool)
                    >= value(&envoy_before, ENVOY_REQUESTS, &pool) + 3.0
        })
        .await;
    assert_eq!(
        value(&envoy, ENVOY_FAILOVERS, &pool),
        value(&envoy_before, ENVOY_FAILOVERS, &pool)
    );
    // The Envoy's reports carry the version it runs.
    assert_eq!(
        value(
            &cp,
            "codexmesh_envoy_snapshot_version",
            &[("kind", "running")]
        ),
        value(&cp, "codexmesh_snapshot_version", &[])
    );

    // acct-0 answers 429 once: the request fails over to acct-1.
    stack
        .sim
        .behavior(json!({"fail_next": [{"status": 429, "body": {"error": {"type": "usage_limit_reached", "message": "x", "resets_in_seconds": 30}}}]}))
        .await
        .unwrap();
    assert_eq!(stack.turn(&stack.key).await.unwrap().0, 200);
    let (cp2, envoy2) = scraper
        .until("the failover counted", |cp2, envoy2| {
            value(cp2, "codexmesh_failovers_total", &[("account", "acct-1")])
                >= value(&cp, "codexmesh_failovers_total", &[("account", "acct-1")]) + 1.0
                && value(envoy2, ENVOY_FAILOVERS, &pool)
                    >= value(&envoy, ENVOY_FAILOVERS, &pool) + 1.0
        })
        .await;
    assert_eq!(
        cp_series("acct-0", "rate_limited", &cp2),
        cp_series("acct-0", "rate_limited", &cp) + 1.0
    );
    assert_eq!(
        cp_series("acct-1", "success", &cp2),
        cp_series("acct-1", "success", &cp) + 1.0
    );
    assert_eq!(
        value(&envoy2, ENVOY_UPSTREAM_429, &pool),
        value(&envoy, ENVOY_UPSTREAM_429, &pool) + 1.0
    );
    assert_eq!(
        value(&envoy2, ENVOY_REQUESTS, &pool),
        value(&envoy, ENVOY_REQUESTS, &pool) + 1.0,
        "a failover is one request"
    );

    // acct-1's token is revoked upstream: its 401 is reported and the server refreshes it.
    stack
        .sim
        .patch_account(&sim1, json!({"expire_access_token": true}))
        .await
        .unwrap();
    for i in 0..4 {
        let resp = stack
            .http
            .post(stack.envoy.url("/backend-api/codex/responses"))
            .bearer_auth(&stack.key)
            .header("session-id", format!("m-{i}"))
            .json(&codexmesh_test_kit::turn_body("x"))
            .send()
            .await
            .unwrap();
        let _ = resp.text().await;
    }
    let refreshed =
        |cp: &Scrape| value(cp, "codexmesh_token_refreshes_total", &[("outcome", "ok")]);
    let polls = |cp: &Scrape| value(cp, "codexmesh_quota_polls_total", &[("outcome", "ok")]);
    let (cp3, _) = scraper
        .until("a refresh and quota polls", |cp3, _| {
            refreshed(cp3) > refreshed(&before)
                && polls(cp3) >= polls(&before) + 2.0
                // The filter accepted what it was sent (its ACK).
                && value(cp3, "codexmesh_envoy_snapshot_version", &[("kind", "acked")])
                    >= value(&before, "codexmesh_snapshot_version", &[])
        })
        .await;
    // Every change is a new snapshot, pushed to the Envoy.
    assert!(
        value(&cp3, "codexmesh_snapshot_version", &[])
            > value(&before, "codexmesh_snapshot_version", &[])
    );
    assert!(
        value(&cp3, "codexmesh_snapshot_pushes_total", &[])
            > value(&before, "codexmesh_snapshot_pushes_total", &[])
    );
    assert!(
        value(
            &cp3,
            "codexmesh_pool_headroom_percent",
            &[("pool", POOL), ("window", "primary")]
        ) > 0.0
    );

    // Every account spent: the gateway answers for the pool and counts it.
    for sim in [&sim0, &sim1] {
        stack
            .sim
            .patch_account(sim, json!({"primary_limit": 0}))
            .await
            .unwrap();
    }
    let mut last = 0;
    for _ in 0..4 {
        last = stack.turn(&stack.key).await.unwrap().0;
        if last == 429 {
            break;
        }
    }
    assert_eq!(last, 429);
    scraper
        .until("the exhausted pool counted", |_, envoy5| {
            value(envoy5, ENVOY_POOL_EXHAUSTED, &pool) >= 1.0
        })
        .await;

    // A paused account moves the accounts gauge.
    stack.cp.cli_json(&["account", "pause", "acct-1"]).unwrap();
    let (_, envoy5) = scraper
        .until("the paused account counted", |cp4, _| {
            let state = |s: &str| value(cp4, "codexmesh_accounts", &[("pool", POOL), ("state", s)]);
            state("paused") == 1.0
                && ["active", "paused", "cooling_down", "needs_reauth"]
                    .iter()
                    .map(|s| state(s))
                    .sum::<f64>()
                    == 2.0
        })
        .await;

    // A wrong key is refused and counted without a pool.
    let (status, _) = stack
        .turn("cmk_wrongwrongwrongwrongwrongwrongwrongwron")
        .await
        .unwrap();
    assert_eq!(status, 401);
    scraper
        .until("the refused key counted", |_, envoy6| {
            value(envoy6, ENVOY_KEYS_REFUSED, &[]) >= value(&envoy5, ENVOY_KEYS_REFUSED, &[]) + 1.0
        })
        .await;

    // The dashboard queries only what these scrapes expose.
    let (cp, envoy) = (scraper.control_plane().await, scraper.envoy().await);
    let mut exposed = names(&cp);
    exposed.extend(names(&envoy));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy/grafana/codexmesh.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !exposed.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no scrape exposes: {missing:?}\nexposed: {exposed:?}"
    );
}

/// Every metric name the dashboard's queries use (identifiers with the `codexmesh_` or
/// `envoy_` prefix, outside label matchers and `by (...)` / `without (...)` groupings).
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    collect_exprs(dashboard, &mut exprs);
    let mut out = BTreeSet::new();
    for expr in exprs {
        let mut cleaned = String::new();
        let mut depth = 0;
        for c in expr.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ if depth == 0 => cleaned.push(c),
                _ => {}
            }
        }
        for grouping in ["by", "without"] {
            while let Some(at) = find_word(&cleaned, grouping) {
                let rest = &cleaned[at + grouping.len()..];
                let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else {
                    break;
                };
                cleaned = format!("{}{}", &cleaned[..at], &rest[close.max(open) + 1..]);
            }
        }
        for word in cleaned.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("codexmesh_") || word.starts_with("envoy_") {
                out.insert(word.to_string());
            }
        }
    }
    out
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().last();
        let after = text[i + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    // Panel queries, and the pool variable's `label_values(...)`.
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_are_read_for_metric_names_only() {
    let dashboard = json!({
        "panels": [{"targets": [{"expr": "sum by (codexmesh_pool, outcome) (rate(codexmesh_filter_requests{codexmesh_pool=~\"$pool\"}[$__rate_interval])) / sum without (pool) (codexmesh_requests_total)"}]}],
        "templating": {"list": [{"definition": "label_values(codexmesh_accounts, pool)"}]}
    });
    let used: Vec<String> = dashboard_metrics(&dashboard).into_iter().collect();
    assert_eq!(
        used,
        [
            "codexmesh_accounts",
            "codexmesh_filter_requests",
            "codexmesh_requests_total"
        ]
    );
}
