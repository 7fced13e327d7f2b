//! The `/v1` surface in the listener filter: the request is translated once it is whole, the
//! answer chunk by chunk as it streams (the logic is `codexmesh_filter_core::translate`; this
//! module only moves bytes between it and Envoy).
//!
//! Rules it keeps:
//! - A 200 answer is translated; an upstream error answer is given OpenAI's shape (the Codex
//!   backend answers FastAPI's `{"detail": ...}`); the gateway's own errors are already shaped.
//! - A streamed translation forwards each upstream chunk as soon as it is translated.
//! - A collected answer (`stream: false`, the model list) holds the response headers back and
//!   replaces every upstream chunk with nothing, so only the translator's small state is kept
//!   (never the upstream's stream); the status is decided when the stream ends: 200 with the
//!   object, or the error the stream ended with.

use codexmesh_filter_core::endpoints::Translation;
use codexmesh_filter_core::translate::chat::{ChatCollector, ChatStream};
use codexmesh_filter_core::translate::error::from_upstream_answer;
use codexmesh_filter_core::translate::responses::Collector;
use codexmesh_filter_core::translate::{chat, models, responses, ApiError, UpstreamRequest};
use proxy_wasm::types::{Action, LogLevel};

use crate::host;

/// How the answer of a translated request is shaped for the client.
pub enum AnswerShape {
    /// Chat completion chunks as the upstream streams.
    ChatStream(Box<ChatStream>),
    /// One `chat.completion` object.
    ChatObject(Box<ChatCollector>),
    /// `/v1/responses` with `stream: false`: one Response object.
    ResponseObject(Box<Collector>),
    /// `/v1/responses` with `stream: true`: the upstream's events as they are.
    ResponsePassthrough,
    /// `/v1/models` (or one model of it): the upstream list is small JSON, kept until whole.
    Models { id: Option<String>, body: Vec<u8> },
    /// An upstream error answer on a `/v1` endpoint: small JSON, kept until whole and given
    /// OpenAI's shape (`translate::error::from_upstream_answer`).
    UpstreamError { status: u16, body: Vec<u8> },
}

/// Translates a whole request body for `translation`.
pub fn translate_request(
    translation: Translation,
    body: &[u8],
) -> Result<(UpstreamRequest, AnswerShape), ApiError> {
    match translation {
        Translation::ChatCompletions => {
            let request = chat::chat_request(body)?;
            let shape = if request.client_stream {
                AnswerShape::ChatStream(Box::new(ChatStream::new(
                    &request.model,
                    request.include_usage,
                )))
            } else {
                AnswerShape::ChatObject(Box::new(ChatCollector::new(&request.model)))
            };
            Ok((request, shape))
        }
        Translation::Responses | Translation::None | Translation::Models => {
            let request = responses::responses_request(body)?;
            let shape = if request.client_stream {
                AnswerShape::ResponsePassthrough
            } else {
                AnswerShape::ResponseObject(Box::new(Collector::new()))
            };
            Ok((request, shape))
        }
    }
}

impl AnswerShape {
    fn collects(&self) -> bool {
        matches!(
            self,
            Self::ChatObject(_)
                | Self::ResponseObject(_)
                | Self::Models { .. }
                | Self::UpstreamError { .. }
        )
    }

    /// At the answer's headers (status 200): what the client will get instead. A collected
    /// answer holds its headers until the end.
    pub fn on_headers(&self, end_of_stream: bool) -> Action {
        let _ = host::remove_response_header("content-length");
        let content_type = match self {
            Self::ChatStream(_) | Self::ResponsePassthrough => "text/event-stream",
            // An error answer without a body keeps its headers as they are.
            Self::UpstreamError { .. } if end_of_stream => return Action::Continue,
            _ => "application/json",
        };
        let _ = host::set_response_header("content-type", content_type);
        if self.collects() && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    /// One upstream chunk: replaced by what the client gets now.
    pub fn on_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if matches!(self, Self::ResponsePassthrough) {
            return Action::Continue;
        }
        let chunk = if body_size > 0 {
            host::response_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let (out, status): (Vec<u8>, Option<(u16, String)>) = match self {
            Self::ResponsePassthrough => return Action::Continue,
            Self::ChatStream(stream) => {
                let mut out = stream.feed(&chunk);
                if end_of_stream {
                    out.extend(stream.finish());
                }
                (out, None)
            }
            Self::ChatObject(collector) => {
                collector.feed(&chunk);
                if !end_of_stream {
                    (Vec::new(), None)
                } else {
                    finished(collector.finish())
                }
            }
            Self::ResponseObject(collector) => {
                collector.feed(&chunk);
                if !end_of_stream {
                    (Vec::new(), None)
                } else {
                    finished(collector.finish())
                }
            }
            Self::UpstreamError { status, body } => {
                if body.len().saturating_add(chunk.len()) <= MAX_ERROR_BODY {
                    body.extend_from_slice(&chunk);
                }
                if !end_of_stream {
                    (Vec::new(), None)
                } else {
                    match from_upstream_answer(*status, body) {
                        // Already OpenAI's shape: as it came.
                        None => (std::mem::take(body), None),
                        Some(err) => finished(Err(err)),
                    }
                }
            }
            Self::Models { id, body } => {
                if body.len().saturating_add(chunk.len()) <= MAX_MODELS_BODY {
                    body.extend_from_slice(&chunk);
                }
                if !end_of_stream {
                    (Vec::new(), None)
                } else {
                    let result = match id {
                        Some(id) => models::model_entry(body, id),
                        None => models::models_list(body),
                    };
                    finished(result)
                }
            }
        };
        if let Some((status, code)) = status {
            let _ = host::set_response_header(":status", &status.to_string());
            let _ = host::set_response_header("x-codexmesh-error", &code);
        }
        if let Err(status) = host::replace_response_body(body_size, &out) {
            host::log(
                LogLevel::Warn,
                &format!("could not replace a translated chunk: {status:?}"),
            );
        }
        if self.collects() && !end_of_stream {
            // Nothing is held: the chunk was replaced by nothing.
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// Upstream error answers are small JSON; beyond this only the start is kept.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The model list is a few KB; anything far larger is not the list.
const MAX_MODELS_BODY: usize = 4 * 1024 * 1024;

/// The body and, for an error, the status and code to answer with.
fn finished(result: Result<Vec<u8>, ApiError>) -> (Vec<u8>, Option<(u16, String)>) {
    match result {
        Ok(body) => (body, None),
        Err(err) => {
            let code = err
                .code
                .clone()
                .unwrap_or_else(|| "translation_failed".into());
            (err.body().into_bytes(), Some((err.status(), code)))
        }
    }
}

/// Whether a request's content type is JSON (a missing one is taken as JSON, as OpenAI does).
pub fn is_json_content_type(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|ct| {
        let media = ct.split(';').next().unwrap_or_default().trim();
        media.eq_ignore_ascii_case("application/json")
            || media.to_ascii_lowercase().ends_with("+json")
    })
}

/// 415 for a body that is not JSON.
pub fn wrong_content_type(content_type: &str) -> ApiError {
    let shown: String = content_type.chars().take(80).collect();
    ApiError {
        status: 415,
        error_type: "invalid_request_error".into(),
        code: Some("unsupported_media_type".into()),
        param: None,
        message: format!(
            "This endpoint takes a JSON body (Content-Type: application/json), not {shown:?}."
        ),
    }
}

/// Answers the client with a translation error and stops the filter chain.
pub fn reply(err: &ApiError) -> Action {
    if let Err(status) = host::send_response(err.status(), &err.headers(), &err.body()) {
        host::log(
            LogLevel::Error,
            &format!("could not send an error answer: {status:?}"),
        );
    }
    Action::Pause
}
