//! `/api/v1/config`: the declarative documents (docs/declarative.md) over HTTP. `PUT` applies a
//! YAML (or JSON) text of documents, whole or not at all (`?dry_run=true`: only the diff;
//! `?prune=true`: also remove what it no longer names); `GET` states pools or operators as the
//! documents `PUT` reads.
//!
//! Rules: each handler is one [`crate::ops::declarative`] call for the [`Caller`]; the body is
//! the same text `codexmesh apply -f` reads (named `body` in errors), at most
//! [`super::MAX_BODY_BYTES`]; a document error is the usual error JSON with the field path in
//! `field` and its place in `file`, `line` and `column`.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{read_body, ApiError, ApiState, Caller, QueryParams, Reply};
use crate::ops::declarative::{self, ApplyReport, ExportKind, SourceFile};
use crate::ops::OpsError;
use codexmesh_model::declarative as docs;
use codexmesh_model::declarative_plan::ApplyOptions;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(get_config, put_config))
}

/// `PUT ?dry_run=&prune=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ApplyParams {
    /// Only answer what would change.
    #[serde(default)]
    pub dry_run: bool,
    /// Also remove what the documents no longer name (memberships and keys of the pools they
    /// name; pools and operators' pools when they have documents of that kind).
    #[serde(default)]
    pub prune: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ConfigKind {
    #[default]
    Pools,
    Operators,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ConfigFormat {
    #[default]
    Yaml,
    Json,
}

/// `GET ?kind=&name=&format=`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct GetParams {
    /// `pools` (the default) or `operators`.
    pub kind: Option<ConfigKind>,
    /// Only this pool (or operator).
    pub name: Option<String>,
    /// `yaml` (the default) or `json` (an array of the same documents).
    pub format: Option<ConfigFormat>,
}

/// A document error: the usual error fields, and where in the body it is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DocumentErrorBody {
    error: DocumentErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DocumentErrorDetail {
    /// invalid, forbidden or conflict.
    kind: String,
    /// `body:LINE:COLUMN: field.path: what is wrong`.
    message: String,
    /// The field path in the document (`spec.routing.max_attempts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// `body`.
    file: String,
    line: usize,
    column: usize,
}

/// An error answer: a document error with its place, or any other.
pub(super) enum ConfigApiError {
    Api(ApiError),
    Document(StatusCode, DocumentErrorBody),
}

impl From<ApiError> for ConfigApiError {
    fn from(e: ApiError) -> Self {
        ConfigApiError::Api(e)
    }
}

impl From<OpsError> for ConfigApiError {
    fn from(e: OpsError) -> Self {
        let OpsError::Document(d) = &e else {
            return ConfigApiError::Api(e.into());
        };
        let d = d.clone();
        let api = ApiError::from(e);
        ConfigApiError::Document(
            api.status,
            DocumentErrorBody {
                error: DocumentErrorDetail {
                    kind: api.body.error.kind,
                    message: d.to_string(),
                    field: (!d.path.is_empty()).then_some(d.path),
                    file: d.file,
                    line: d.line,
                    column: d.column,
                },
            },
        )
    }
}

impl IntoResponse for ConfigApiError {
    fn into_response(self) -> Response {
        match self {
            ConfigApiError::Api(e) => e.into_response(),
            ConfigApiError::Document(status, body) => (status, Json(body)).into_response(),
        }
    }
}

/// Media types whose bodies are read as documents (YAML 1.2 reads JSON too).
fn is_document_type(content_type: &str) -> bool {
    matches!(
        content_type.trim().to_ascii_lowercase().as_str(),
        "application/yaml"
            | "application/x-yaml"
            | "text/yaml"
            | "text/x-yaml"
            | "application/json"
    )
}

/// Applies documents (YAML, or JSON: one document or an array): all or nothing. New keys'
/// secrets are in this answer only.
#[utoipa::path(put, path = "/api/v1/config", tag = "config", params(ApplyParams),
    request_body(content = String, content_type = "application/yaml",
        description = "Documents as in `codexmesh apply -f` (YAML, `---` between documents), or JSON \
                       (Content-Type: application/json): one document or an array of them"),
    responses((status = 200, body = Reply<ApplyReport>), (status = 400, body = DocumentErrorBody),
              (status = 403, body = DocumentErrorBody), (status = 409, body = DocumentErrorBody),
              (status = 413, body = super::ErrorBody), (status = 415, body = super::ErrorBody)))]
async fn put_config(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<ApplyParams>,
    request: Request,
) -> Result<Json<Reply<ApplyReport>>, ConfigApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_owned();
    if !is_document_type(&content_type) {
        return Err(ApiError::raw(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the documents with Content-Type: application/yaml (or application/json)"
                .to_owned(),
            None,
        )
        .into());
    }
    let bytes = read_body(request, &state).await?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::invalid("body", "the documents must be UTF-8 text"))?;
    let files = [SourceFile {
        name: "body".into(),
        text,
    }];
    let outcome = declarative::apply(
        &caller.ops(&state),
        &files,
        ApplyOptions { prune: q.prune },
        q.dry_run,
    )
    .await?;
    Ok(Json(Reply {
        value: outcome.value.report(),
        notices: outcome.notices,
    }))
}

/// Pools (unarchived, with memberships and active keys) or operators the caller sees, as the
/// documents `PUT` reads.
#[utoipa::path(get, path = "/api/v1/config", tag = "config", params(GetParams),
    responses((status = 200, description = "The documents (YAML, or JSON with format=json)",
               content_type = "application/yaml", body = String),
              (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn get_config(
    State(state): State<ApiState>,
    caller: Caller,
    QueryParams(q): QueryParams<GetParams>,
) -> Result<Response, ApiError> {
    let kind = match q.kind.unwrap_or_default() {
        ConfigKind::Pools => ExportKind::Pools,
        ConfigKind::Operators => ExportKind::Operators,
    };
    let found = declarative::export(&caller.ops(&state), kind, q.name.as_deref())
        .await?
        .value;
    Ok(match q.format.unwrap_or_default() {
        ConfigFormat::Json => {
            Json(found.iter().map(docs::to_value).collect::<Vec<_>>()).into_response()
        }
        ConfigFormat::Yaml => (
            [(header::CONTENT_TYPE, "application/yaml")],
            docs::to_yaml(&found),
        )
            .into_response(),
    })
}
