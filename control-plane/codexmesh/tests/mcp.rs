//! The operators' MCP endpoint (`/mcp`, issue 15) against the real `serve`, with a real MCP
//! client session (the official SDK's client over streamable HTTP): it initializes, lists the
//! tools and calls each; an admin scoped to one pool sees only that pool's data; without a
//! valid API token it answers 401; and no answer holds an account token, a pool key or an API
//! token used in the test.

use codexmesh_test_kit::auth::Login;
use codexmesh_test_kit::cli::{Cli, Workspace};
use codexmesh_test_kit::serve::Served;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn api_token(ws: &Workspace, label: &str, role: &str, pools: &str) -> Res<String> {
    let mut args = vec![
        "operator", "token", "create", "--label", label, "--role", role,
    ];
    if !pools.is_empty() {
        args.extend(["--pools", pools]);
    }
    Ok(ws.ok_json(&args)?["secret"]
        .as_str()
        .ok_or("no secret")?
        .to_owned())
}

async fn session(url: &str, token: &str) -> Res<RunningService<RoleClient, ()>> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(token),
    );
    Ok(().serve(transport).await?)
}

/// Calls `tool` and returns its JSON answer (the text of its one content block) and the raw
/// result text (scanned for secrets).
async fn call(
    client: &RunningService<RoleClient, ()>,
    tool: &'static str,
    args: Value,
) -> Res<(Value, String)> {
    let mut params = CallToolRequestParams::new(tool);
    if let Value::Object(map) = args {
        params = params.with_arguments(map);
    }
    let result: CallToolResult = client.call_tool(params).await?;
    let raw = serde_json::to_string(&result)?;
    assert_ne!(result.is_error, Some(true), "{tool}: {raw}");
    let text = match result.content.first() {
        Some(ContentBlock::Text(t)) => t.text.clone(),
        other => return Err(format!("{tool}: no text content: {other:?}").into()),
    };
    Ok((serde_json::from_str(&text)?, raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_read_pools_accounts_requests_and_audit_over_mcp() -> TestResult {
    let ws = Workspace::new()?;
    let mut logins = Vec::new();
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
        logins.push(login);
    }
    let key = ws.ok_json(&["key", "create", "--pool", "a"])?["key"]
        .as_str()
        .ok_or("no key")?
        .to_owned();
    let owner = api_token(&ws, "owner-bot", "owner", "")?;
    let admin_a = api_token(&ws, "admin-a-bot", "admin", "a")?;
    let served = Served::start(&ws, &[])?;
    let url = format!("http://{}/mcp", served.admin_addr()?);

    let mut secrets: Vec<String> = vec![key.clone(), owner.clone(), admin_a.clone()];
    for l in &logins {
        secrets.extend([
            l.access_token.clone(),
            l.refresh_token.clone(),
            l.id_token.clone(),
        ]);
    }
    let mut answers = String::new();

    // Owner: initialize, list the tools, call each.
    let client = session(&url, &owner).await?;
    let info = client
        .peer_info()
        .ok_or("no server info after initialize")?;
    assert_eq!(info.server_info.name, "codexmesh");
    answers.push_str(&serde_json::to_string(&*info)?);
    let tools = client.list_all_tools().await?;
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "audit_entries",
            "forecast",
            "list_accounts",
            "list_pools",
            "recent_requests"
        ]
    );
    answers.push_str(&serde_json::to_string(&tools)?);

    let (pools, raw) = call(&client, "list_pools", json!({})).await?;
    answers.push_str(&raw);
    let mut pool_names: Vec<&str> = pools
        .as_array()
        .ok_or("pools: not a list")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    pool_names.sort_unstable();
    assert_eq!(pool_names, ["a", "b"]);

    let (accounts, raw) = call(&client, "list_accounts", json!({"pool": "a"})).await?;
    answers.push_str(&raw);
    let accounts = accounts.as_array().ok_or("accounts: not a list")?;
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["label"], "acct-a");
    assert!(accounts[0]["quota"].is_array(), "{}", accounts[0]);

    let (requests, raw) = call(&client, "recent_requests", json!({"limit": 10})).await?;
    answers.push_str(&raw);
    assert!(requests.is_array(), "{requests}");

    let (forecast, raw) = call(&client, "forecast", json!({})).await?;
    answers.push_str(&raw);
    let forecast = forecast.as_array().ok_or("forecast: not a list")?;
    let mut forecast_pools: Vec<&str> =
        forecast.iter().filter_map(|f| f["pool"].as_str()).collect();
    forecast_pools.sort_unstable();
    assert_eq!(forecast_pools, ["a", "b"]);
    for f in forecast {
        assert!(
            f["primary"].is_object() && f["secondary"].is_object(),
            "{f}"
        );
    }
    let (one, raw) = call(&client, "forecast", json!({"pool": "a"})).await?;
    answers.push_str(&raw);
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");

    let (audit, raw) = call(&client, "audit_entries", json!({"limit": 100})).await?;
    answers.push_str(&raw);
    let audit = audit.as_array().ok_or("audit: not a list")?;
    assert!(
        audit.iter().any(|r| r["action"] == "key.create"),
        "{audit:?}"
    );

    // A bad argument is the tool's error (readable by the model), not a crash.
    let bad = client
        .call_tool(
            CallToolRequestParams::new("recent_requests")
                .with_arguments(json!({"limit": 0}).as_object().cloned().unwrap_or_default()),
        )
        .await?;
    assert_eq!(bad.is_error, Some(true), "{bad:?}");
    let unknown = client
        .call_tool(
            CallToolRequestParams::new("list_pools").with_arguments(
                json!({"colour": "red"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await;
    assert!(unknown.is_err(), "an unknown argument was accepted");
    client.cancel().await?;

    // An admin of pool a sees pool a only, everywhere.
    let scoped = session(&url, &admin_a).await?;
    let (pools, raw) = call(&scoped, "list_pools", json!({})).await?;
    answers.push_str(&raw);
    let names: Vec<&str> = pools
        .as_array()
        .ok_or("pools: not a list")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["a"]);
    let (accounts, raw) = call(&scoped, "list_accounts", json!({})).await?;
    answers.push_str(&raw);
    assert!(!raw.contains("acct-b"), "{raw}");
    assert_eq!(accounts.as_array().map(Vec::len), Some(1));
    let other = scoped
        .call_tool(
            CallToolRequestParams::new("list_accounts").with_arguments(
                json!({"pool": "b"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await?;
    assert_eq!(other.is_error, Some(true));
    let text = serde_json::to_string(&other)?;
    assert!(text.contains("no pool named"), "{text}");
    let (forecast, raw) = call(&scoped, "forecast", json!({})).await?;
    answers.push_str(&raw);
    assert_eq!(forecast.as_array().map(Vec::len), Some(1), "{forecast}");
    assert_eq!(forecast[0]["pool"], "a");
    let other = scoped
        .call_tool(
            CallToolRequestParams::new("forecast").with_arguments(
                json!({"pool": "b"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await?;
    assert_eq!(
        other.is_error,
        Some(true),
        "another tenant's forecast was answered"
    );
    let (audit, raw) = call(&scoped, "audit_entries", json!({})).await?;
    answers.push_str(&raw);
    assert!(!raw.contains("\"b\""), "{audit}");
    scoped.cancel().await?;

    // No token, a wrong one, or a session cookie: 401 before any MCP message is read.
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}});
    for auth in [
        None,
        Some("Bearer cma_0000000000000000000000000000000000000000"),
        Some("Bearer not-a-token"),
    ] {
        let mut req = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(&init);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await?;
        assert_eq!(resp.status().as_u16(), 401, "{auth:?}");
    }

    for secret in &secrets {
        assert!(
            !answers.contains(secret.as_str()),
            "an MCP answer holds a secret"
        );
    }
    served.stop()?;
    Ok(())
}
