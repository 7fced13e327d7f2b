//! `/mcp`: a read-only Model Context Protocol endpoint for operators (issue 15), over the MCP
//! streamable HTTP transport (the official Rust SDK, `rmcp`), stateless, answering JSON.
//!
//! Rules this module keeps:
//! - every request needs an operator API token (`Authorization: Bearer cma_…`, the admin API's
//!   tokens); nothing else (no cookie, no session) is accepted, and without one the answer is
//!   401 before any MCP message is read;
//! - each tool is one read-only `ops` use case run for the token's principal, so an operator
//!   scoped to some pools sees exactly what the admin API shows it there: `list_pools`
//!   (`ops::pools::list`), `list_accounts` (`ops::accounts::list` with `ops::reports::quota`),
//!   `recent_requests` (`ops::reports::requests`), `audit_entries` (`ops::operators::audit`);
//! - answers are metadata only, as the admin API's: the use cases return no token, secret,
//!   key or prompt;
//! - a use case's refusal (bad argument, unknown pool) is a tool error the model can read; an
//!   internal failure says only that (details stay in the server log);
//! - the SDK's Host check (meant for unauthenticated local servers) is off: a bearer token that
//!   a browser never attaches by itself already defeats DNS rebinding, and the admin listener's
//!   `admin_allowed_cidrs` applies here as to every route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, Implementation, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerInfo, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{bearer, ApiError, ApiState, Caller, ClientAddress};
use crate::ops::{self, ErrorKind, OpsError};
use crate::requests::Filter;
use codexmesh_store::AuditFilter;

/// The path the endpoint is served at.
pub(crate) const MCP_PATH: &str = "/mcp";
/// Rows a tool returns when not told (`limit`).
const DEFAULT_LIMIT: i64 = 50;

/// The MCP endpoint, behind [`require_api_token`]; its sessions end with `shutdown`.
pub(super) fn routes(state: &ApiState, shutdown: &CancellationToken) -> Router<ApiState> {
    let tools = OperatorTools {
        state: state.clone(),
    };
    let config = StreamableHttpServerConfig::default()
        .with_stateful_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts()
        .with_cancellation_token(shutdown.child_token());
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new().route_service(MCP_PATH, service).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), require_api_token),
    )
}

/// Admits a request with a valid operator API token (adding its [`Caller`]); else 401.
async fn require_api_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(request.headers())
        .filter(|t| codexmesh_model::operators::looks_like_api_token(t))
        .map(str::to_owned)
    else {
        return ApiError::unauthenticated(
            "the MCP endpoint needs an operator API token: Authorization: Bearer cma_… \
             (codexmesh operator token create)",
        )
        .into_response();
    };
    let access = match ops::operators::verify_token(&state.base, &token).await {
        Ok(access) => access,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let client = request
        .extensions()
        .get::<ClientAddress>()
        .map(|c| c.0.to_string());
    request.extensions_mut().insert(Caller {
        access,
        client,
        totp_setup_only: false,
    });
    next.run(request).await
}

/// The tools, run for the caller the HTTP request carried.
#[derive(Clone)]
struct OperatorTools {
    state: ApiState,
}

/// `list_pools`: nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// `list_accounts`: an optional pool.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolArgs {
    pool: Option<String>,
}

/// `recent_requests`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsArgs {
    pool: Option<String>,
    limit: Option<i64>,
}

/// `audit_entries`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditArgs {
    limit: Option<i64>,
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

/// The tools' names, descriptions and argument schemas.
fn tools() -> Vec<Tool> {
    let pool = json!({"type": "string", "description": "Pool name"});
    let limit = json!({"type": "integer", "minimum": 1, "maximum": 1000,
                       "description": "Rows to return (default 50)"});
    vec![
        Tool::new(
            "list_pools",
            "The pools you see, with their routing, account count and key counts.",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        ),
        Tool::new(
            "list_accounts",
            "Accounts (of one pool, or of every pool you see) with their state, health and \
             quota windows (5-hour and weekly used percent and reset times).",
            schema(json!({"type": "object", "properties": {"pool": pool},
                          "additionalProperties": false})),
        ),
        Tool::new(
            "recent_requests",
            "The request log, newest first: which account served each upstream attempt, its \
             status, latency and why it was routed there.",
            schema(
                json!({"type": "object", "properties": {"pool": pool, "limit": limit},
                          "additionalProperties": false}),
            ),
        ),
        Tool::new(
            "forecast",
            "When each pool's 5-hour and weekly windows run out at the current burn rate (of \
             one pool, or of every pool you see): used percent, burn rate per hour, projected \
             run-out, next reset, and whether it runs out before the reset.",
            schema(json!({"type": "object", "properties": {"pool": pool},
                          "additionalProperties": false})),
        ),
        Tool::new(
            "audit_entries",
            "The audit log, newest first: who changed what, when, from where, and the outcome.",
            schema(json!({"type": "object", "properties": {"limit": limit},
                          "additionalProperties": false})),
        ),
    ]
}

fn arguments<T: DeserializeOwned + Default>(args: Option<JsonObject>) -> Result<T, McpError> {
    match args {
        None => Ok(T::default()),
        Some(map) => serde_json::from_value(Value::Object(map))
            .map_err(|e| McpError::invalid_params(format!("arguments: {e}"), None)),
    }
}

/// A use case's answer as a tool result: its value as JSON text, or its refusal as a tool
/// error (internal failures say only that).
fn answer<T: serde::Serialize>(result: Result<T, OpsError>) -> Result<CallToolResult, McpError> {
    match result {
        Ok(value) => Ok(CallToolResult::success(vec![ContentBlock::json(value)?])),
        Err(e) => match e.kind() {
            ErrorKind::Internal | ErrorKind::Unavailable => {
                tracing::error!(error = %e, "MCP tool failed");
                Err(McpError::internal_error(
                    "internal error (see the control plane's log)",
                    None,
                ))
            }
            _ => Ok(CallToolResult::error(vec![ContentBlock::text(
                e.to_string(),
            )])),
        },
    }
}

/// The forecast of one pool, or of every pool the caller sees (in name order).
async fn forecasts(
    ops: &ops::Ops,
    pool: Option<&str>,
) -> Result<Vec<ops::forecast::PoolForecast>, OpsError> {
    let names: Vec<String> = match pool {
        Some(name) => vec![name.to_owned()],
        None => ops::pools::list(ops)
            .await?
            .value
            .into_iter()
            .map(|p| p.pool.name)
            .collect(),
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(ops::forecast::forecast(ops, &name).await?.value);
    }
    Ok(out)
}

/// Each account with its quota rows (one per pool it serves that the caller sees).
async fn accounts_with_quota(ops: &ops::Ops, pool: Option<&str>) -> Result<Value, OpsError> {
    let accounts = ops::accounts::list(ops, pool).await?.value;
    let quota = ops::reports::quota(ops, pool).await?.value;
    let mut rows = Vec::with_capacity(accounts.len());
    for account in accounts {
        let windows: Vec<&ops::reports::AccountQuota> = quota
            .iter()
            .filter(|q| q.account_id == account.id)
            .collect();
        let mut row = serde_json::to_value(&account)
            .map_err(|e| OpsError::Conflict(format!("cannot render account: {e}")))?;
        if let Value::Object(map) = &mut row {
            map.insert(
                "quota".to_owned(),
                json!(windows
                    .iter()
                    .map(|q| json!({"pool": q.pool, "primary": q.primary,
                                     "secondary": q.secondary, "plan": q.plan}))
                    .collect::<Vec<_>>()),
            );
        }
        rows.push(row);
    }
    Ok(Value::Array(rows))
}

impl ServerHandler for OperatorTools {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("codexmesh", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Read-only view of a codexmesh control plane for its operators: pools, accounts \
                 with quota and health, recent requests, the pools' forecast and the audit log, limited to the pools \
                 the API token may see. Metadata only.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let caller = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| McpError::invalid_request("no authenticated caller", None))?;
        let ops = caller.ops(&self.state);
        match request.name.as_ref() {
            "list_pools" => {
                let NoArgs {} = arguments(request.arguments)?;
                answer(ops::pools::list(&ops).await.map(|o| o.value))
            }
            "list_accounts" => {
                let args: PoolArgs = arguments(request.arguments)?;
                answer(accounts_with_quota(&ops, args.pool.as_deref()).await)
            }
            "recent_requests" => {
                let args: RequestsArgs = arguments(request.arguments)?;
                let filter = Filter {
                    pool: args.pool,
                    limit: Some(args.limit.unwrap_or(DEFAULT_LIMIT)),
                    ..Filter::default()
                };
                answer(ops::reports::requests(&ops, &filter).await.map(|o| o.value))
            }
            "forecast" => {
                let args: PoolArgs = arguments(request.arguments)?;
                answer(forecasts(&ops, args.pool.as_deref()).await)
            }
            "audit_entries" => {
                let args: AuditArgs = arguments(request.arguments)?;
                let filter = AuditFilter {
                    limit: args.limit.unwrap_or(DEFAULT_LIMIT),
                    ..AuditFilter::default()
                };
                answer(ops::operators::audit(&ops, filter).await.map(|o| o.value))
            }
            other => Err(McpError::invalid_params(
                format!(
                    "no tool named {other:?} (list_pools, list_accounts, recent_requests, \
                     forecast, audit_entries)"
                ),
                None,
            )),
        }
    }
}
