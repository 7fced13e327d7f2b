//! Errors of the `/v1` translation, in OpenAI's shape
//! `{"error":{"message","type","param","code"}}`.
//!
//! Rules this module keeps:
//! - [`ApiError`] carries what [`GatewayError`] cannot: the `param` (a field path such as
//!   `messages[2].content[1].type`) and an upstream's own error code. It answers with the same
//!   three calls as [`GatewayError`] (`status`, `headers`, `body`), so the adapter sends either
//!   the same way; [`ApiError::sse_event`] frames it for a stream already under way.
//! - Every `ApiError` converts into a [`GatewayError`] (for code that only takes those): the
//!   status class picks the kind, the param is folded into the message.
//! - Messages echo at most [`MAX_ECHO`] characters of anything the client sent.

use crate::errors::{ErrorKind, GatewayError};

use super::sse;

/// Longest client-supplied text (a model name, a field value) echoed in a message.
pub const MAX_ECHO: usize = 120;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, ...
    pub error_type: String,
    pub code: Option<String>,
    pub param: Option<String>,
    pub message: String,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(code: &str, param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            error_type: "invalid_request_error".into(),
            code: Some(code.into()),
            param: param.map(str::to_string),
            message: message.into(),
        }
    }

    /// A body that is not JSON (or not an object).
    pub fn invalid_json(detail: &str) -> Self {
        Self::invalid(
            "invalid_json",
            None,
            format!(
                "We could not parse the JSON body of your request: {}",
                echo(detail)
            ),
        )
    }

    pub fn missing(param: &str) -> Self {
        Self::invalid(
            "missing_required_parameter",
            Some(param),
            format!("Missing required parameter: '{param}'."),
        )
    }

    pub fn invalid_type(param: &str, expected: &str) -> Self {
        Self::invalid(
            "invalid_type",
            Some(param),
            format!("Invalid type for '{param}': expected {expected}."),
        )
    }

    pub fn unsupported_value(param: &str, why: &str) -> Self {
        Self::invalid(
            "unsupported_value",
            Some(param),
            format!("Unsupported value for '{param}': {why}"),
        )
    }

    pub fn unsupported_parameter(param: &str, why: &str) -> Self {
        Self::invalid(
            "unsupported_parameter",
            Some(param),
            format!("Unsupported parameter: '{param}'. {why}"),
        )
    }

    /// `GET /v1/models/{id}` for a model the pool does not serve.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            status: 404,
            error_type: "invalid_request_error".into(),
            code: Some("model_not_found".into()),
            param: Some("model".into()),
            message: format!(
                "The model '{}' does not exist or you do not have access to it.",
                echo(model)
            ),
        }
    }

    /// The upstream stream ended (or broke) before the response was complete.
    pub fn stream_incomplete(detail: &str) -> Self {
        Self {
            status: 502,
            error_type: "server_error".into(),
            code: Some("stream_incomplete".into()),
            param: None,
            message: format!("The upstream answer ended early: {detail}"),
        }
    }

    /// The upstream answered but not in the shape expected.
    pub fn bad_upstream(detail: &str) -> Self {
        Self {
            status: 502,
            error_type: "server_error".into(),
            code: Some("bad_upstream_response".into()),
            param: None,
            message: format!("The upstream answer could not be read: {detail}"),
        }
    }

    /// A `response.failed` or `error` event's `{code, message}`: the status follows the code.
    pub fn from_upstream(code: Option<&str>, message: Option<&str>) -> Self {
        let code = code.unwrap_or("server_error");
        let (status, error_type) = match code {
            "rate_limit_exceeded" | "usage_limit_reached" | "insufficient_quota" => (429, code),
            "server_error" | "server_is_overloaded" | "slow_down" => (500, "server_error"),
            c if c.starts_with("invalid")
                || c.contains("context_length")
                || c.contains("too_large")
                || c == "bad_request" =>
            {
                (400, "invalid_request_error")
            }
            _ => (500, "server_error"),
        };
        Self {
            status,
            error_type: error_type.to_string(),
            code: Some(echo(code)),
            param: None,
            message: message
                .map(str::to_string)
                .unwrap_or_else(|| "The model failed to produce a response.".into()),
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The error object alone (`{"message","type","param","code"}`).
    pub fn object(&self) -> serde_json::Value {
        serde_json::json!({
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        })
    }

    /// `{"error":{...}}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.object() }).to_string()
    }

    /// OpenAI's in-stream error: `data: {"error":{...}}\n\n`.
    pub fn sse_event(&self) -> Vec<u8> {
        let mut out = Vec::new();
        sse::write_data(&mut out, self.body().as_bytes());
        out
    }

    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(code) = &self.code {
            headers.push(("x-codexmesh-error", code.clone()));
        }
        headers
    }
}

impl From<ApiError> for GatewayError {
    fn from(err: ApiError) -> Self {
        let kind = match err.status {
            404 => ErrorKind::ModelNotFound,
            400..=499 => ErrorKind::InvalidRequest,
            _ => ErrorKind::UpstreamFailed,
        };
        let message = match &err.param {
            Some(param) => format!("{} (param: {param})", err.message),
            None => err.message,
        };
        GatewayError::new(kind, message)
    }
}

/// An upstream HTTP error answer on a `/v1` endpoint, in OpenAI's shape. `None` when the body
/// already is (`{"error":{...}}`): it passes as it came. The Codex backend's FastAPI answers
/// (`{"detail": "..."}` or a list of validation errors) keep their status and message; its
/// refusal of a model the account cannot use becomes OpenAI's `404 model_not_found`.
pub fn from_upstream_answer(status: u16, body: &[u8]) -> Option<ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if value.get("error").is_some_and(serde_json::Value::is_object) {
        return None;
    }
    let message = match value.get("detail") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.get("msg").and_then(serde_json::Value::as_str))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    let message = if message.is_empty() {
        format!("The Codex backend answered HTTP {status}.")
    } else {
        message.chars().take(MAX_UPSTREAM_MESSAGE).collect()
    };
    if status == 400 && message.contains("model is not supported") {
        return Some(ApiError {
            status: 404,
            error_type: "invalid_request_error".into(),
            code: Some("model_not_found".into()),
            param: Some("model".into()),
            message,
        });
    }
    let (error_type, code) = match status {
        401 | 403 => ("invalid_request_error", "upstream_auth_failed"),
        404 => ("invalid_request_error", "not_found"),
        413 => ("invalid_request_error", "request_too_large"),
        400..=499 => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "upstream_error"),
    };
    Some(ApiError {
        status,
        error_type: error_type.into(),
        code: Some(code.into()),
        param: None,
        message,
    })
}

/// Longest upstream error message passed on.
const MAX_UPSTREAM_MESSAGE: usize = 500;

/// At most [`MAX_ECHO`] characters of `text`.
pub fn echo(text: &str) -> String {
    text.chars().take(MAX_ECHO).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn openai_shape_with_param() {
        let err = ApiError::unsupported_value("messages[2].content[1].type", "no audio.");
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"]["param"], "messages[2].content[1].type");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "unsupported_value");
        assert_eq!(err.status(), 400);
        let framed = err.sse_event();
        assert!(framed.starts_with(b"data: {\"error\":"));
        assert!(framed.ends_with(b"}\n\n"));
    }

    #[test]
    fn converts_to_gateway_errors() {
        let g: GatewayError = ApiError::missing("model").into();
        assert_eq!(g.status(), 400);
        assert!(g.message.contains("param: model"));
        let g: GatewayError = ApiError::model_not_found("x").into();
        assert_eq!(g.status(), 404);
        let g: GatewayError = ApiError::from_upstream(Some("server_error"), None).into();
        assert_eq!(g.status(), 502);
    }

    #[test]
    fn upstream_codes_pick_the_status() {
        assert_eq!(
            ApiError::from_upstream(Some("invalid_prompt"), None).status,
            400
        );
        assert_eq!(
            ApiError::from_upstream(Some("context_length_exceeded"), None).status,
            400
        );
        assert_eq!(
            ApiError::from_upstream(Some("rate_limit_exceeded"), None).status,
            429
        );
        assert_eq!(ApiError::from_upstream(None, Some("x")).status, 500);
    }

    #[test]
    fn upstream_error_answers_take_openai_s_shape() {
        let openai = br#"{"error":{"message":"x","type":"invalid_request_error","code":"c"}}"#;
        assert_eq!(from_upstream_answer(400, openai), None);
        let model = from_upstream_answer(
            400,
            br#"{"detail":"The 'nope' model is not supported when using Codex with a ChatGPT account."}"#,
        )
        .unwrap();
        assert_eq!(
            (model.status, model.code.as_deref()),
            (404, Some("model_not_found"))
        );
        assert_eq!(model.param.as_deref(), Some("model"));
        let detail =
            from_upstream_answer(400, br#"{"detail":"Instructions are required"}"#).unwrap();
        assert_eq!(detail.status, 400);
        assert_eq!(detail.message, "Instructions are required");
        let list = from_upstream_answer(
            422,
            br#"{"detail":[{"loc":["body","input"],"msg":"field required","type":"missing"}]}"#,
        )
        .unwrap();
        assert_eq!(list.message, "field required");
        let garbage = from_upstream_answer(502, b"<html>bad gateway</html>").unwrap();
        assert_eq!(garbage.error_type, "server_error");
        let body: serde_json::Value = serde_json::from_str(&garbage.body()).unwrap();
        assert_eq!(body["error"]["code"], "upstream_error");
    }
}
