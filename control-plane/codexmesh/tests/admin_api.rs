//! The admin API against the real `serve` and store: tenant isolation on every route (driven
//! by the served OpenAPI document, which is the router's own route table), bad input, keys
//! shown once, auth.json uploads, and the audit of refused changes.

use std::collections::BTreeMap;

use codexmesh_test_kit::auth::Login;
use codexmesh_test_kit::cli::{Cli, Workspace};
use codexmesh_test_kit::serve::Served;
use reqwest::Method;
use serde_json::{json, Value};

#[path = "../../../tests/seeded/mod.rs"]
mod seeded;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Two tenants' pools (`a`, `b`), an account and a key in each (and an account labelled `dup`
/// in both), and API tokens: owner, admin of `a`, viewer of `a`.
struct Tenants {
    ws: Workspace,
    served: Served,
    base: String,
    owner: String,
    admin_a: String,
    viewer_a: String,
    http: reqwest::Client,
}

fn token(
    ws: &Workspace,
    label: &str,
    role: &str,
    pools: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut args = vec![
        "operator", "token", "create", "--label", label, "--role", role,
    ];
    if !pools.is_empty() {
        args.extend(["--pools", pools]);
    }
    let v = ws.ok_json(&args)?;
    Ok(v["secret"].as_str().ok_or("no secret")?.to_owned())
}

impl Tenants {
    async fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let ws = Workspace::new()?;
        for pool in ["a", "b"] {
            ws.ok(&["pool", "create", pool])?;
            let login = Login::new(
                &format!("acct-{pool}"),
                &format!("{pool}@x.test"),
                "plus",
                pool,
            );
            ws.import_auth(
                &format!("{pool}.json"),
                &login.auth_json(),
                pool,
                Some(&format!("acct-{pool}")),
            )?;
            let dup = Login::new(
                &format!("dup-{pool}"),
                &format!("dup-{pool}@x.test"),
                "plus",
                &format!("d{pool}"),
            );
            ws.import_auth(
                &format!("dup-{pool}.json"),
                &dup.auth_json(),
                pool,
                Some("dup"),
            )?;
            ws.ok(&[
                "key",
                "create",
                "--pool",
                pool,
                "--name",
                &format!("key-{pool}"),
            ])?;
            ws.ok(&[
                "alert",
                "webhook",
                "add",
                &format!("hook-{pool}"),
                "--url",
                "http://127.0.0.1:9/",
                "--pool",
                pool,
            ])?;
            ws.ok(&[
                "invite",
                "create",
                "--pool",
                pool,
                "--label",
                &format!("invite-{pool}"),
            ])?;
        }
        let owner = token(&ws, "owner-bot", "owner", "")?;
        let admin_a = token(&ws, "admin-a-bot", "admin", "a")?;
        token(&ws, "admin-b-bot", "admin", "b")?;
        let viewer_a = token(&ws, "viewer-a-bot", "viewer", "a")?;
        let served = Served::start(&ws, &[])?;
        let base = format!("http://{}", served.admin_addr()?);
        let http = reqwest::Client::new();
        for (name, role, pool) in [("bob-b", "admin", "b"), ("carol-a", "viewer", "a")] {
            let resp = http
                .post(format!("{base}/api/v1/operators"))
                .bearer_auth(&owner)
                .json(&json!({"name": name, "role": role, "pools": [pool]}))
                .send()
                .await?;
            if resp.status().as_u16() != 201 {
                return Err(format!("creating {name}: {}", resp.text().await?).into());
            }
        }
        Ok(Self {
            ws,
            served,
            base,
            owner,
            admin_a,
            viewer_a,
            http,
        })
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Box<dyn std::error::Error>> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }
}

/// How a route treats another tenant's data.
enum Isolation {
    /// Addresses one resource by path: `other` names the other tenant's, `own` the caller's.
    /// An admin of `a` gets the same 404 for `other` as for a name nobody has; a viewer of `a`
    /// reads `own` (GET) or is refused 403 (a change).
    Resource {
        other: Vec<&'static str>,
        own: &'static str,
        missing: &'static str,
        body: Option<Value>,
        /// What a viewer of `a` gets for `own` when not the rule above (operators and tokens
        /// are not visible to viewers at all: 404).
        viewer_own: Option<u16>,
    },
    /// Lists what the caller sees: the other tenant's names never appear.
    Listing { path: &'static str },
    /// Only owners may (creating a pool): 403 for admins and viewers alike.
    OwnersOnly { path: &'static str, body: Value },
    /// Creates something scoped to pools: naming the other tenant's pool is 404 for an admin of
    /// `a`; a viewer of `a` may not create (403) even for `a`.
    Scoped {
        path: &'static str,
        other_body: Value,
        own_body: Value,
    },
    /// About the caller itself (no tenant data): 401 without a principal, `for_tokens` for an
    /// API token (which has no session or second factor).
    SelfService {
        path: &'static str,
        body: Option<Value>,
        for_tokens: u16,
    },
    /// A stream with no tenant data (live events): 401 without a principal, else it opens
    /// (200, `text/event-stream`) for anyone signed in; only the status and headers are read.
    Stream { path: &'static str },
}

fn auth_json_body() -> Value {
    serde_json::from_str(&Login::new("acct-new", "new@x.test", "plus", "new").auth_json())
        .unwrap_or(Value::Null)
}

fn res(
    other: &[&'static str],
    own: &'static str,
    missing: &'static str,
    body: Option<Value>,
) -> Isolation {
    Isolation::Resource {
        other: other.to_vec(),
        own,
        missing,
        body,
        viewer_own: None,
    }
}

/// An operator or token route: a viewer sees no operator or token but itself.
fn res_hidden_from_viewers(
    other: &[&'static str],
    own: &'static str,
    missing: &'static str,
    body: Option<Value>,
) -> Isolation {
    Isolation::Resource {
        other: other.to_vec(),
        own,
        missing,
        body,
        viewer_own: Some(404),
    }
}

fn me(path: &'static str, body: Option<Value>, for_tokens: u16) -> Isolation {
    Isolation::SelfService {
        path,
        body,
        for_tokens,
    }
}

fn list(path: &'static str) -> Isolation {
    Isolation::Listing { path }
}

/// One isolation case per route of the OpenAPI document, keyed `METHOD /path/{param}`.
#[rustfmt::skip]
fn cases() -> BTreeMap<&'static str, Isolation> {
    let routing = || Some(json!({"strategy": "round_robin"}));
    let member = || Some(json!({"priority": 3}));
    let cross = ["/api/v1/pools/b/accounts/acct-b", "/api/v1/pools/a/accounts/acct-b",
                 "/api/v1/pools/b/accounts/acct-a"];
    BTreeMap::from([
        ("GET /api/v1/pools", list("/api/v1/pools")),
        ("POST /api/v1/pools", Isolation::OwnersOnly { path: "/api/v1/pools", body: json!({"name": "c"}) }),
        ("GET /api/v1/pools/{pool}", res(&["/api/v1/pools/b"], "/api/v1/pools/a", "/api/v1/pools/zz-none", None)),
        ("PATCH /api/v1/pools/{pool}/routing", res(&["/api/v1/pools/b/routing"], "/api/v1/pools/a/routing", "/api/v1/pools/zz-none/routing", routing())),
        ("PATCH /api/v1/pools/{pool}/network", res(&["/api/v1/pools/b/network"], "/api/v1/pools/a/network", "/api/v1/pools/zz-none/network", Some(json!({"allowed_cidrs": ["10.0.0.0/8"]})))),
        ("POST /api/v1/pools/{pool}/archive", res(&["/api/v1/pools/b/archive"], "/api/v1/pools/a/archive", "/api/v1/pools/zz-none/archive", None)),
        ("POST /api/v1/pools/{pool}/restore", res(&["/api/v1/pools/b/restore"], "/api/v1/pools/a/restore", "/api/v1/pools/zz-none/restore", None)),
        ("GET /api/v1/pools/{pool}/activity", res(&["/api/v1/pools/b/activity"], "/api/v1/pools/a/activity", "/api/v1/pools/zz-none/activity", None)),
        ("GET /api/v1/accounts", list("/api/v1/accounts")),
        ("GET /api/v1/accounts/{account}", res(&["/api/v1/accounts/acct-b"], "/api/v1/accounts/acct-a", "/api/v1/accounts/zz-none", None)),
        ("DELETE /api/v1/accounts/{account}", res(&["/api/v1/accounts/acct-b"], "/api/v1/accounts/acct-a", "/api/v1/accounts/zz-none", None)),
        ("POST /api/v1/accounts/{account}/pause", res(&["/api/v1/accounts/acct-b/pause"], "/api/v1/accounts/acct-a/pause", "/api/v1/accounts/zz-none/pause", None)),
        ("POST /api/v1/accounts/{account}/resume", res(&["/api/v1/accounts/acct-b/resume"], "/api/v1/accounts/acct-a/resume", "/api/v1/accounts/zz-none/resume", None)),
        ("PUT /api/v1/accounts/{account}/egress_proxy", res(&["/api/v1/accounts/acct-b/egress_proxy"], "/api/v1/accounts/acct-a/egress_proxy", "/api/v1/accounts/zz-none/egress_proxy", Some(json!({"egress_proxy": "http://proxy.internal:3128"})))),
        ("POST /api/v1/accounts/{account}/refresh", res(&["/api/v1/accounts/acct-b/refresh"], "/api/v1/accounts/acct-a/refresh", "/api/v1/accounts/zz-none/refresh", None)),
        ("GET /api/v1/accounts/{account}/activity", res(&["/api/v1/accounts/acct-b/activity"], "/api/v1/accounts/acct-a/activity", "/api/v1/accounts/zz-none/activity", None)),
        ("POST /api/v1/pools/{pool}/accounts", res(&["/api/v1/pools/b/accounts"], "/api/v1/pools/a/accounts", "/api/v1/pools/zz-none/accounts", Some(auth_json_body()))),
        ("PUT /api/v1/pools/{pool}/accounts/{account}", res(&cross, "/api/v1/pools/a/accounts/acct-a", "/api/v1/pools/zz-none/accounts/zz-none", member())),
        ("DELETE /api/v1/pools/{pool}/accounts/{account}", res(&cross, "/api/v1/pools/a/accounts/acct-a", "/api/v1/pools/zz-none/accounts/zz-none", None)),
        ("GET /api/v1/keys", list("/api/v1/keys")),
        ("POST /api/v1/pools/{pool}/keys", res(&["/api/v1/pools/b/keys"], "/api/v1/pools/a/keys", "/api/v1/pools/zz-none/keys", Some(json!({})))),
        ("GET /api/v1/keys/{key}", res(&["/api/v1/keys/key-b"], "/api/v1/keys/key-a", "/api/v1/keys/zz-none", None)),
        ("POST /api/v1/keys/{key}/rotate", res(&["/api/v1/keys/key-b/rotate"], "/api/v1/keys/key-a/rotate", "/api/v1/keys/zz-none/rotate", None)),
        ("POST /api/v1/keys/{key}/revoke", res(&["/api/v1/keys/key-b/revoke"], "/api/v1/keys/key-a/revoke", "/api/v1/keys/zz-none/revoke", None)),
        ("PATCH /api/v1/keys/{key}/routing", res(&["/api/v1/keys/key-b/routing"], "/api/v1/keys/key-a/routing", "/api/v1/keys/zz-none/routing", routing())),
        ("GET /api/v1/keys/{key}/policy", res(&["/api/v1/keys/key-b/policy"], "/api/v1/keys/key-a/policy", "/api/v1/keys/zz-none/policy", None)),
        ("PUT /api/v1/keys/{key}/policy", res(&["/api/v1/keys/key-b/policy"], "/api/v1/keys/key-a/policy", "/api/v1/keys/zz-none/policy", Some(json!({"requests_per_minute": 5})))),
        ("GET /api/v1/status", list("/api/v1/status")),
        ("GET /api/v1/overview", list("/api/v1/overview")),
        ("GET /api/v1/quota", list("/api/v1/quota")),
        // Refreshing live state writes only quota evidence: a viewer of the pool may (200).
        ("POST /api/v1/pools/{pool}/quota/refresh", Isolation::Resource { other: vec!["/api/v1/pools/b/quota/refresh"],
            own: "/api/v1/pools/a/quota/refresh", missing: "/api/v1/pools/zz-none/quota/refresh", body: None, viewer_own: Some(200) }),
        ("GET /api/v1/requests", list("/api/v1/requests")),
        ("GET /api/v1/activity", list("/api/v1/activity?since=1h")),
        ("GET /api/v1/envoys", list("/api/v1/envoys")),
        ("GET /api/v1/gateway", list("/api/v1/gateway")),
        // A device login: adding an account (viewers may not); its outcome only for whoever
        // started it (nobody else finds one, whatever the id).
        ("POST /api/v1/pools/{pool}/logins", res(&["/api/v1/pools/b/logins"], "/api/v1/pools/a/logins",
            "/api/v1/pools/zz-none/logins", Some(json!({})))),
        ("GET /api/v1/logins/{login}", Isolation::Resource { other: vec!["/api/v1/logins/lgn_someone_elses"],
            own: "/api/v1/logins/lgn_unknown", missing: "/api/v1/logins/lgn_missing", body: None, viewer_own: Some(404) }),
        ("GET /api/v1/events", Isolation::Stream { path: "/api/v1/events" }),
        ("GET /api/v1/audit", list("/api/v1/audit?limit=1000")),
        ("GET /api/v1/operators", list("/api/v1/operators")),
        ("POST /api/v1/operators", Isolation::Scoped { path: "/api/v1/operators",
            other_body: json!({"name": "x1", "role": "viewer", "pools": ["b"]}),
            own_body: json!({"name": "x2", "role": "viewer", "pools": ["a"]}) }),
        ("GET /api/v1/operators/{operator}", res_hidden_from_viewers(&["/api/v1/operators/bob-b"], "/api/v1/operators/carol-a", "/api/v1/operators/zz-none", None)),
        ("PUT /api/v1/operators/{operator}/role", res_hidden_from_viewers(&["/api/v1/operators/bob-b/role"], "/api/v1/operators/carol-a/role", "/api/v1/operators/zz-none/role", Some(json!({"role": "viewer"})))),
        ("PUT /api/v1/operators/{operator}/pools", res_hidden_from_viewers(&["/api/v1/operators/bob-b/pools"], "/api/v1/operators/carol-a/pools", "/api/v1/operators/zz-none/pools", Some(json!({"pools": ["a"]})))),
        ("PUT /api/v1/operators/{operator}/password", res_hidden_from_viewers(&["/api/v1/operators/bob-b/password"], "/api/v1/operators/carol-a/password", "/api/v1/operators/zz-none/password", Some(json!({"password": "a long enough password"})))),
        ("POST /api/v1/operators/{operator}/disable", res_hidden_from_viewers(&["/api/v1/operators/bob-b/disable"], "/api/v1/operators/carol-a/disable", "/api/v1/operators/zz-none/disable", None)),
        ("POST /api/v1/operators/{operator}/enable", res_hidden_from_viewers(&["/api/v1/operators/bob-b/enable"], "/api/v1/operators/carol-a/enable", "/api/v1/operators/zz-none/enable", None)),
        ("GET /api/v1/tokens", list("/api/v1/tokens")),
        ("POST /api/v1/tokens", Isolation::Scoped { path: "/api/v1/tokens",
            other_body: json!({"label": "t1", "role": "viewer", "pools": ["b"]}),
            own_body: json!({"label": "t2", "role": "viewer", "pools": ["a"]}) }),
        ("POST /api/v1/tokens/{token}/revoke", res_hidden_from_viewers(&["/api/v1/tokens/admin-b-bot/revoke"], "/api/v1/tokens/viewer-a-bot/revoke", "/api/v1/tokens/zz-none/revoke", None)),
        // Declarative documents: GET states what the caller sees; PUT naming another tenant's
        // pool is refused as creating a pool (owners only), worded as for a name nobody has.
        ("GET /api/v1/config", list("/api/v1/config?format=json")),
        ("PUT /api/v1/config", Isolation::OwnersOnly { path: "/api/v1/config",
            body: json!({"api_version": "codexmesh.dev/v1", "kind": "Pool", "metadata": {"name": "b"}}) }),
        ("GET /api/v1/invites", list("/api/v1/invites")),
        ("POST /api/v1/pools/{pool}/invites", res(&["/api/v1/pools/b/invites"], "/api/v1/pools/a/invites", "/api/v1/pools/zz-none/invites", Some(json!({})))),
        ("DELETE /api/v1/invites/{invite}", res(&["/api/v1/invites/invite-b"], "/api/v1/invites/invite-a", "/api/v1/invites/zz-none", None)),
        ("GET /api/v1/me", me("/api/v1/me", None, 200)),
        ("DELETE /api/v1/session", me("/api/v1/session", None, 400)),
        ("POST /api/v1/me/totp", me("/api/v1/me/totp", None, 403)),
        ("POST /api/v1/me/totp/confirm", me("/api/v1/me/totp/confirm", Some(json!({"code": "123456"})), 403)),
        ("DELETE /api/v1/me/totp", me("/api/v1/me/totp", None, 403)),
        // Alerts (issue 15): a webhook belongs to its pool's tenant; one without a pool to owners.
        ("GET /api/v1/pools/{pool}/forecast", res(&["/api/v1/pools/b/forecast"], "/api/v1/pools/a/forecast", "/api/v1/pools/zz-none/forecast", None)),
        ("GET /api/v1/alerts/webhooks", list("/api/v1/alerts/webhooks")),
        ("POST /api/v1/alerts/webhooks", Isolation::Scoped { path: "/api/v1/alerts/webhooks",
            other_body: json!({"name": "w1", "url": "http://127.0.0.1:9/", "pool": "b"}),
            own_body: json!({"name": "w2", "url": "http://127.0.0.1:9/", "pool": "a"}) }),
        ("DELETE /api/v1/alerts/webhooks/{webhook}", res(&["/api/v1/alerts/webhooks/hook-b"], "/api/v1/alerts/webhooks/hook-a", "/api/v1/alerts/webhooks/zz-none", None)),
        ("POST /api/v1/alerts/webhooks/{webhook}/test", res(&["/api/v1/alerts/webhooks/hook-b/test"], "/api/v1/alerts/webhooks/hook-a/test", "/api/v1/alerts/webhooks/zz-none/test", None)),
        ("GET /api/v1/alerts/episodes", list("/api/v1/alerts/episodes")),
        ("GET /api/v1/pools/{pool}/warmup", res(&["/api/v1/pools/b/warmup"], "/api/v1/pools/a/warmup", "/api/v1/pools/zz-none/warmup", None)),
        ("PUT /api/v1/pools/{pool}/warmup", res(&["/api/v1/pools/b/warmup"], "/api/v1/pools/a/warmup", "/api/v1/pools/zz-none/warmup", Some(json!({"at": "07:30", "weekdays": "mon-fri"})))),
    ])
}

/// The routes of the served OpenAPI document as `METHOD /path`.
async fn documented_routes(t: &Tenants) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let (code, doc) = t
        .call(None, Method::GET, "/api/v1/openapi.json", None)
        .await?;
    assert_eq!(code, 200, "{doc}");
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().ok_or("no paths")? {
        for method in item.as_object().ok_or("bad path item")?.keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    Ok(routes)
}

/// Routes anyone may call (nothing to isolate).
const OPEN: &[&str] = &[
    "POST /api/v1/session",
    "POST /api/v1/bootstrap",
    "POST /api/v1/invites/redeem",
];

fn method_of(route: &str) -> Method {
    route
        .split(' ')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(Method::GET)
}

/// The other tenant's names, which no listing for `a`'s principals may show.
const OTHER_NAMES: &[&str] = &["\"b\"", "acct-b", "key-b", "dup-b", "bob-b", "admin-b-bot"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_keeps_tenants_apart() -> TestResult {
    let t = Tenants::start().await?;
    let routes = documented_routes(&t).await?;
    let cases = cases();
    let missing: Vec<&String> = routes
        .iter()
        .filter(|r| !cases.contains_key(r.as_str()) && !OPEN.contains(&r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes without a tenant-isolation case (add one to cases()): {missing:?}"
    );
    let (_, before) = t
        .call(Some(&t.owner), Method::GET, "/api/v1/status", None)
        .await?;
    for route in &routes {
        if OPEN.contains(&route.as_str()) {
            continue;
        }
        let method = method_of(route);
        match &cases[route.as_str()] {
            Isolation::Resource {
                other,
                own,
                missing,
                body,
                viewer_own,
            } => {
                // Unauthenticated: 401 before anything is looked up.
                let (code, _) = t.call(None, method.clone(), own, body.as_ref()).await?;
                assert_eq!(code, 401, "{route} without a token");
                let (miss_code, miss) = t
                    .call(Some(&t.admin_a), method.clone(), missing, body.as_ref())
                    .await?;
                assert_eq!(miss_code, 404, "{route} {missing}: {miss}");
                for path in other {
                    for who in [&t.admin_a, &t.viewer_a] {
                        let (code, answer) = t
                            .call(Some(who), method.clone(), path, body.as_ref())
                            .await?;
                        assert_eq!(
                            code, 404,
                            "{route} {path}: another tenant's is not found: {answer}"
                        );
                        assert_eq!(answer["error"]["kind"], "not_found", "{route} {path}");
                        for name in OTHER_NAMES {
                            let text = answer.to_string().replace("\\\"", "\"");
                            assert!(
                                !text.contains(&format!("pools ({})", name.trim_matches('"'))),
                                "{route} {path}: leaks {name}: {answer}"
                            );
                        }
                    }
                }
                let (code, answer) = t
                    .call(Some(&t.viewer_a), method.clone(), own, body.as_ref())
                    .await?;
                if let Some(expected) = viewer_own {
                    assert_eq!(code, *expected, "{route}: {answer}");
                } else if method == Method::GET {
                    assert_eq!(
                        code, 200,
                        "{route}: a viewer reads its own pool's: {answer}"
                    );
                } else {
                    assert_eq!(code, 403, "{route}: a viewer changes nothing: {answer}");
                    assert_eq!(answer["error"]["kind"], "forbidden", "{route}");
                }
            }
            Isolation::Listing { path } => {
                let (code, _) = t.call(None, Method::GET, path, None).await?;
                assert_eq!(code, 401, "{route} without a token");
                for (who, me) in [
                    (&t.admin_a, "token:admin-a-bot"),
                    (&t.viewer_a, "token:viewer-a-bot"),
                ] {
                    let (code, mut answer) = t.call(Some(who), Method::GET, path, None).await?;
                    assert_eq!(code, 200, "{route}: {answer}");
                    if let Some(rows) = answer.as_array_mut() {
                        // Its own audit rows may name what it typed (its refused attempts).
                        rows.retain(|r| r["actor"] != me);
                    }
                    let text = answer.to_string();
                    for name in OTHER_NAMES {
                        assert!(
                            !text.contains(name),
                            "{route} shows {name} to a tenant of a: {text}"
                        );
                    }
                }
                let (_, all) = t.call(Some(&t.owner), Method::GET, path, None).await?;
                if path.ends_with("/pools")
                    || path.ends_with("/accounts")
                    || path.ends_with("/keys")
                {
                    assert!(
                        all.to_string().contains("-b") || all.to_string().contains("\"b\""),
                        "{route}: the owner sees b: {all}"
                    );
                }
            }
            Isolation::Scoped {
                path,
                other_body,
                own_body,
            } => {
                let (code, _) = t.call(None, method.clone(), path, Some(own_body)).await?;
                assert_eq!(code, 401, "{route} without a token");
                let (code, answer) = t
                    .call(Some(&t.admin_a), method.clone(), path, Some(other_body))
                    .await?;
                assert_eq!(code, 404, "{route}: another tenant's pool: {answer}");
                let (code, answer) = t
                    .call(Some(&t.viewer_a), method.clone(), path, Some(own_body))
                    .await?;
                assert_eq!(code, 403, "{route}: a viewer creates nothing: {answer}");
            }
            Isolation::SelfService {
                path,
                body,
                for_tokens,
            } => {
                let (code, _) = t.call(None, method.clone(), path, body.as_ref()).await?;
                assert_eq!(code, 401, "{route} without a principal");
                let (code, answer) = t
                    .call(Some(&t.viewer_a), method.clone(), path, body.as_ref())
                    .await?;
                assert_eq!(code, *for_tokens, "{route} for an API token: {answer}");
                assert!(!answer.to_string().contains("bob-b"), "{route}: {answer}");
            }
            Isolation::Stream { path } => {
                let (code, _) = t.call(None, Method::GET, path, None).await?;
                assert_eq!(code, 401, "{route} without a principal");
                for who in [&t.admin_a, &t.viewer_a] {
                    // Only the head: the body never ends while the server runs.
                    let resp = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        t.http
                            .get(format!("{}{path}", t.base))
                            .bearer_auth(who)
                            .send(),
                    )
                    .await??;
                    assert_eq!(resp.status().as_u16(), 200, "{route}");
                    let ct = resp
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    assert!(ct.starts_with("text/event-stream"), "{route}: {ct}");
                }
            }
            Isolation::OwnersOnly { path, body } => {
                let (code, _) = t.call(None, method.clone(), path, Some(body)).await?;
                assert_eq!(code, 401, "{route} without a token");
                for who in [&t.admin_a, &t.viewer_a] {
                    let (code, answer) =
                        t.call(Some(who), method.clone(), path, Some(body)).await?;
                    assert_eq!(code, 403, "{route}: {answer}");
                }
            }
        }
    }
    // A label shared by both tenants resolves to the caller's own account, not "ambiguous".
    let (code, dup) = t
        .call(Some(&t.admin_a), Method::GET, "/api/v1/accounts/dup", None)
        .await?;
    assert_eq!(code, 200, "{dup}");
    assert_eq!(dup["pools"][0]["pool"], "a", "{dup}");
    // Filters naming the other tenant's things answer as for names nobody has.
    for (filter, nobody) in [
        ("pool=b", "pool=zz-none"),
        ("account=acct-b", "account=zz-none"),
        ("key=key-b", "key=zz-none"),
    ] {
        let (code_b, b) = t
            .call(
                Some(&t.admin_a),
                Method::GET,
                &format!("/api/v1/requests?{filter}"),
                None,
            )
            .await?;
        let (code_n, n) = t
            .call(
                Some(&t.admin_a),
                Method::GET,
                &format!("/api/v1/requests?{nobody}"),
                None,
            )
            .await?;
        assert_eq!(code_b, code_n, "{filter}: {b} vs {n}");
        assert_eq!(b["error"]["field"], n["error"]["field"], "{filter}");
    }
    // Nothing any refused attempt tried was written: the store's revision did not move.
    let (_, after) = t
        .call(Some(&t.owner), Method::GET, "/api/v1/status", None)
        .await?;
    assert_eq!(
        before["revision"], after["revision"],
        "a refused change wrote something"
    );
    assert_eq!(before["pools"], after["pools"]);
    t.served.stop()?;
    drop(t.ws);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_and_changes_nothing() -> TestResult {
    let t = Tenants::start().await?;
    let url = format!("{}/api/v1/pools/a/routing", t.base);
    let send = |body: &'static str, ct: &'static str| {
        t.http
            .patch(&url)
            .bearer_auth(&t.owner)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    for (body, field) in [
        (r#"{"strategy": "fastest"}"#, "strategy"),
        (r#"{"strategy": "round_robin", "colour": "red"}"#, "colour"),
        (r#"{"max_attempts": [1]}"#, "max_attempts"),
        (r#"{"max_attempts": 0}"#, "max_attempts"),
        (r#"{"strategy": "#, "strategy"),
        (r#"[1, 2]"#, "body"),
    ] {
        let resp = send(body, "application/json").await?;
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let v: Value = resp.json().await?;
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
        assert_eq!(v["error"]["kind"], "invalid", "{body}");
    }
    let resp = send(r#"{"strategy": "round_robin"}"#, "text/plain").await?;
    assert_eq!(resp.status().as_u16(), 415);
    // Oversized bodies: 413, for JSON bodies and uploads.
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(300 * 1024));
    let resp = t
        .http
        .post(format!("{}/api/v1/pools", t.base))
        .bearer_auth(&t.owner)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 413);
    let resp = t
        .http
        .post(format!("{}/api/v1/pools/a/accounts", t.base))
        .bearer_auth(&t.owner)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 413);
    // Nested paths: the field inside.
    let resp = t
        .http
        .put(format!("{}/api/v1/pools/a/accounts/acct-a", t.base))
        .bearer_auth(&t.owner)
        .json(&json!({"priority": "high"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["field"], "priority", "{v}");
    // Unknown and malformed query parameters.
    for (query, field) in [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("acount=x", "acount"),
    ] {
        let (code, v) = t
            .call(
                Some(&t.owner),
                Method::GET,
                &format!("/api/v1/requests?{query}"),
                None,
            )
            .await?;
        assert_eq!(code, 400, "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
    }
    // An egress proxy: a bad URL names egress_proxy; a good one is stored canonical, null
    // clears it.
    for body in [
        json!({"egress_proxy": "https://proxy:3128"}),
        json!({"egress_proxy": "http://user:pw@proxy:3128"}),
        json!({"egress_proxy": 3128}),
        json!({"egress_proxy": "http://p:1", "other": 1}),
    ] {
        let (code, v) = t
            .call(
                Some(&t.owner),
                Method::PUT,
                "/api/v1/accounts/acct-a/egress_proxy",
                Some(&body),
            )
            .await?;
        assert_eq!(code, 400, "{body}: {v}");
        let field = v["error"]["field"].as_str().unwrap_or_default();
        assert!(field == "egress_proxy" || field == "other", "{body}: {v}");
    }
    let (code, v) = t
        .call(
            Some(&t.owner),
            Method::PUT,
            "/api/v1/accounts/acct-a/egress_proxy",
            Some(&json!({"egress_proxy": "HTTP://Proxy.Internal:3128/"})),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["egress_proxy"], "http://proxy.internal:3128", "{v}");
    let (code, v) = t
        .call(
            Some(&t.owner),
            Method::PUT,
            "/api/v1/accounts/acct-a/egress_proxy",
            Some(&json!({"egress_proxy": null})),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    assert!(v["egress_proxy"].is_null(), "{v}");
    // A broken auth.json upload names auth_json.
    let resp = t
        .http
        .post(format!("{}/api/v1/pools/a/accounts", t.base))
        .bearer_auth(&t.owner)
        .json(&json!({"tokens": {"access_token": "x"}}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["field"], "auth_json", "{v}");
    // None of it changed the store; an unknown route is a JSON 404.
    let (_, status) = t
        .call(Some(&t.owner), Method::GET, "/api/v1/pools/a", None)
        .await?;
    assert_eq!(status["routing"]["strategy"], "quota_first", "{status}");
    let (code, v) = t
        .call(Some(&t.owner), Method::GET, "/api/v1/nothing-here", None)
        .await?;
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (404, Some("not_found"))
    );
    t.served.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_its_pool_through_the_api() -> TestResult {
    let t = Tenants::start().await?;
    let admin = Some(t.admin_a.as_str());
    // Routing.
    let (code, v) = t
        .call(
            admin,
            Method::PATCH,
            "/api/v1/pools/a/routing",
            Some(&json!({"strategy": "round_robin", "max_attempts": 2})),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["routing"]["strategy"].as_str(), v["changed"].as_bool()),
        (Some("round_robin"), Some(true))
    );
    // Keys: the secret once; rotation gives a new one; lists never show them.
    let (code, created) = t
        .call(
            admin,
            Method::POST,
            "/api/v1/pools/a/keys",
            Some(&json!({"label": "ci"})),
        )
        .await?;
    assert_eq!(code, 201, "{created}");
    let first = created["secret"].as_str().ok_or("no secret")?.to_owned();
    let resp = t
        .http
        .get(format!("{}/api/v1/keys", t.base))
        .bearer_auth(&t.admin_a)
        .send()
        .await?;
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "no answer is cached"
    );
    let (code, rotated) = t
        .call(admin, Method::POST, "/api/v1/keys/ci/rotate", None)
        .await?;
    assert_eq!(code, 200, "{rotated}");
    let second = rotated["secret"].as_str().ok_or("no secret")?.to_owned();
    assert_ne!(first, second);
    assert_eq!(
        rotated["key"]["id"], created["key"]["id"],
        "same key, new secret"
    );
    let (_, list) = t.call(admin, Method::GET, "/api/v1/keys", None).await?;
    assert!(!list.to_string().contains(&first) && !list.to_string().contains(&second));
    let (code, revoked) = t
        .call(admin, Method::POST, "/api/v1/keys/ci/revoke", None)
        .await?;
    assert_eq!(
        (code, revoked["status"].as_str()),
        (200, Some("revoked")),
        "{revoked}"
    );
    let (code, _) = t
        .call(admin, Method::POST, "/api/v1/keys/ci/rotate", None)
        .await?;
    assert_eq!(code, 409, "a revoked key gets no new secret");
    // An auth.json upload, memberships, pause and resume.
    let login = Login::new("acct-up", "up@x.test", "pro", "up");
    let resp = t
        .http
        .post(format!("{}/api/v1/pools/a/accounts?label=uploaded", t.base))
        .bearer_auth(&t.admin_a)
        .header("content-type", "application/json")
        .body(login.auth_json())
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 201);
    let imported: Value = resp.json().await?;
    assert_eq!(imported["account"]["label"], "uploaded", "{imported}");
    assert!(
        !imported.to_string().contains(&login.access_token),
        "no token echoed"
    );
    let (code, v) = t
        .call(
            admin,
            Method::PUT,
            "/api/v1/pools/a/accounts/uploaded",
            Some(&json!({"priority": 5, "weight": 3})),
        )
        .await?;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["priority"].as_u64(), v["weight"].as_u64()),
        (Some(5), Some(3))
    );
    let (code, v) = t
        .call(admin, Method::POST, "/api/v1/accounts/uploaded/pause", None)
        .await?;
    assert_eq!((code, v["state"].as_str()), (200, Some("paused")), "{v}");
    let (code, v) = t
        .call(
            admin,
            Method::POST,
            "/api/v1/accounts/uploaded/resume",
            None,
        )
        .await?;
    assert_eq!((code, v["state"].as_str()), (200, Some("active")), "{v}");
    // Archive: the pool stays readable, marked archived; restore brings it back.
    let (code, v) = t
        .call(admin, Method::POST, "/api/v1/pools/a/archive", None)
        .await?;
    assert_eq!(code, 200, "{v}");
    assert!(v["archived_at_ms"].is_i64(), "{v}");
    let (code, v) = t
        .call(admin, Method::POST, "/api/v1/pools/a/restore", None)
        .await?;
    assert_eq!(code, 200, "{v}");
    assert!(v.get("archived_at_ms").is_none(), "{v}");
    // Every change is in the audit log with who, what, how it ended and from where, and no
    // secret is: not the keys, not the login's tokens.
    let (code, audit) = t
        .call(admin, Method::GET, "/api/v1/audit?pool=a&limit=100", None)
        .await?;
    assert_eq!(code, 200, "{audit}");
    let rows = audit.as_array().ok_or("not a list")?;
    for action in [
        "pool.set_routing",
        "key.create",
        "key.rotate",
        "key.revoke",
        "account.import",
        "account.set",
        "account.pause",
        "account.resume",
        "pool.archive",
        "pool.restore",
    ] {
        let row = rows
            .iter()
            .find(|r| r["action"] == action && r["outcome"] == "ok")
            .ok_or(format!("no {action} row: {audit}"))?;
        assert_eq!(row["actor"], "token:admin-a-bot", "{row}");
        assert_eq!(row["outcome"], "ok", "{row}");
        assert_eq!(row["client"], "127.0.0.1", "{row}");
        assert!(
            row["pools"]
                .as_array()
                .is_some_and(|p| p.contains(&json!("a"))),
            "{row}"
        );
    }
    let refused = rows
        .iter()
        .find(|r| r["action"] == "key.rotate" && r["outcome"] == "conflict");
    assert!(
        refused.is_some(),
        "the refused rotation is audited: {audit}"
    );
    let text = audit.to_string();
    for secret in [&first, &second, &login.access_token, &login.refresh_token] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret reached the audit log"
        );
    }
    // The CLI sees the same store (one set of use cases).
    let accounts = t.ws.ok_json(&["account", "list", "--pool", "a"])?;
    assert!(accounts.to_string().contains("uploaded"));
    t.served.stop()?;
    Ok(())
}

/// Every route that reads a JSON body, with a valid body for it: the bodies of [`cases`] (own
/// tenant's path) and the routes anyone may call.
fn body_routes() -> Vec<(String, Method, String, Value, bool)> {
    let mut out = Vec::new();
    for (route, case) in cases() {
        let (path, body) = match case {
            Isolation::Resource {
                own,
                body: Some(body),
                ..
            } => (own, body),
            Isolation::OwnersOnly { path, body } => (path, body),
            Isolation::Scoped { path, own_body, .. } => (path, own_body),
            Isolation::SelfService {
                path,
                body: Some(body),
                ..
            } => (path, body),
            _ => continue,
        };
        out.push((
            route.to_owned(),
            method_of(route),
            path.to_owned(),
            body,
            true,
        ));
    }
    for (route, body) in [
        (
            "POST /api/v1/session",
            json!({"name": "nobody", "password": "a long enough password"}),
        ),
        (
            "POST /api/v1/bootstrap",
            json!({"secret": "cmb_x", "name": "root", "password": "a long enough password"}),
        ),
        (
            "POST /api/v1/invites/redeem",
            json!({"code": "cmi_x", "name": "friend"}),
        ),
    ] {
        let path = route.split(' ').nth(1).unwrap_or_default().to_owned();
        out.push((route.to_owned(), method_of(route), path, body, false));
    }
    out
}

/// Issue 16 (fuzzing): every admin route that reads a JSON body, sent seeded arbitrary bytes and
/// mutations of a valid body (byte-level and JSON-aware: types changed, keys dropped or added,
/// values nested), through the real router, store and use cases. No input may crash the handler
/// (a panic drops the connection) or answer 500: each is taken or refused with a JSON error
/// naming its kind, and the server keeps serving. Bounded: ~1.5 s or 150 bodies per route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_route_takes_or_refuses_fuzzed_bodies() -> TestResult {
    let t = Tenants::start().await?;
    let documented = documented_routes(&t).await?;
    let routes = body_routes();
    let mut rng = seeded::Rng::new(16);
    let mut sent = 0usize;
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (route, method, path, valid, authed) in &routes {
        assert!(documented.contains(route), "{route} is not documented");
        let seed = serde_json::to_vec(valid)?;
        let seeds: [&[u8]; 1] = [&seed];
        let started = std::time::Instant::now();
        let cases = seeded::cases(150);
        for case in 0..cases {
            if started.elapsed() > std::time::Duration::from_millis(1500) {
                break;
            }
            let body = seeded::input(&mut rng, &seeds, 1024);
            let mut req = t
                .http
                .request(method.clone(), format!("{}{path}", t.base))
                .header("content-type", "application/json")
                .body(body.clone());
            if *authed {
                req = req.bearer_auth(&t.owner);
            }
            let ctx = || format!("{route} case {case}: {:?}", String::from_utf8_lossy(&body));
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) => return Err(format!("{}: no answer ({e})", ctx()).into()),
            };
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            sent += 1;
            *by_status.entry(status).or_default() += 1;
            assert!(status != 500, "{}: 500 {text}", ctx());
            if status >= 400 {
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                assert!(v["error"]["kind"].is_string(), "{}: {status} {text}", ctx());
            }
        }
    }
    let (code, health) = t.call(None, Method::GET, "/healthz", None).await?;
    assert_eq!(code, 200, "{health}");
    println!(
        "{} body routes, {sent} fuzzed bodies, answers by status: {by_status:?}",
        routes.len()
    );
    assert!(routes.len() >= 15 && sent >= routes.len() * 10);
    t.served.stop()?;
    Ok(())
}
