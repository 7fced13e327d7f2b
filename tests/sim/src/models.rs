//! The model catalogue of `GET /codex/models`, in the shape Codex CLI 0.169 reads
//! (`ModelsResponse { models: [ModelInfo] }` plus an `ETag` header; `If-None-Match` naming that
//! ETag gets a 304).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Slugs of the built-in catalogue, highest priority first.
pub const DEFAULT_MODELS: &[(&str, &str, &str)] = &[
    (
        "gpt-5.1-codex",
        "GPT-5.1-Codex",
        "Simulated coding model (codexmesh-sim).",
    ),
    (
        "gpt-5.1-codex-mini",
        "GPT-5.1-Codex-Mini",
        "Simulated small coding model (codexmesh-sim).",
    ),
    (
        "gpt-5.5",
        "GPT-5.5",
        "Simulated general model (codexmesh-sim).",
    ),
];

const INSTRUCTIONS: &str = "You are Codex, a coding agent. (Instructions served by codexmesh-sim.)";

/// One `ModelInfo` entry.
pub fn model_info(slug: &str, display_name: &str, description: &str, priority: i64) -> Value {
    let effort = |e: &str, d: &str| json!({"effort": e, "description": d});
    json!({
        "slug": slug,
        "display_name": display_name,
        "description": description,
        "default_reasoning_level": "medium",
        "supported_reasoning_levels": [
            effort("low", "Fast responses with lighter reasoning"),
            effort("medium", "Balances speed and reasoning depth for everyday tasks"),
            effort("high", "Greater reasoning depth for complex problems"),
        ],
        "shell_type": "shell_command",
        "visibility": "list",
        "minimal_client_version": "0.1.0",
        "supported_in_api": true,
        "availability_nux": null,
        "upgrade": null,
        "priority": priority,
        "base_instructions": INSTRUCTIONS,
        "model_messages": {
            "instructions_template": INSTRUCTIONS,
            "instructions_variables": null,
        },
        "supports_reasoning_summaries": true,
        "supports_reasoning_summary_parameter": true,
        "default_reasoning_summary": "none",
        "support_verbosity": true,
        "default_verbosity": "low",
        "apply_patch_tool_type": "freeform",
        "web_search_tool_type": "text_and_image",
        "input_modalities": ["text", "image"],
        "truncation_policy": {"mode": "tokens", "limit": 10000},
        "supports_parallel_tool_calls": true,
        "prefer_websockets": false,
        "context_window": 272000,
        "max_context_window": 272000,
        "auto_compact_token_limit": null,
        "effective_context_window_percent": 95,
        "experimental_supported_tools": [],
        "supports_search_tool": false,
        "default_service_tier": null,
        "service_tiers": [],
        "additional_speed_tiers": [],
    })
}

/// The built-in catalogue.
pub fn default_models() -> Value {
    Value::Array(
        DEFAULT_MODELS
            .iter()
            .enumerate()
            .map(|(i, (slug, name, desc))| model_info(slug, name, desc, i as i64 + 1))
            .collect(),
    )
}

/// The `/models` body and its ETag for a catalogue (`override_models` or the built-in one);
/// `prefer_websockets` sets that flag on every model object.
pub fn models_response(
    override_models: Option<&Value>,
    prefer_websockets: bool,
) -> (Value, String) {
    let mut models = override_models.cloned().unwrap_or_else(default_models);
    if prefer_websockets {
        for m in models.as_array_mut().into_iter().flatten() {
            if let Some(obj) = m.as_object_mut() {
                obj.insert("prefer_websockets".into(), Value::Bool(true));
            }
        }
    }
    let body = json!({ "models": models });
    let digest = Sha256::digest(body.to_string().as_bytes());
    let etag = format!("\"{}\"", crate::recording::hex(&digest[..8]));
    (body, etag)
}

/// Whether an `If-None-Match` header value matches `etag` (a list, `*`, weak tags).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = bare(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_shape() {
        let (body, etag) = models_response(None, false);
        let models = body["models"].as_array().unwrap();
        assert_eq!(models.len(), DEFAULT_MODELS.len());
        for m in models {
            for key in [
                "slug",
                "display_name",
                "supported_reasoning_levels",
                "shell_type",
                "visibility",
                "supported_in_api",
                "priority",
                "truncation_policy",
                "supports_parallel_tool_calls",
                "experimental_supported_tools",
            ] {
                assert!(m.get(key).is_some(), "{key} missing");
            }
        }
        assert!(etag.starts_with('"') && etag.ends_with('"'));
        let (_, etag2) = models_response(Some(&json!([])), false);
        assert_ne!(etag, etag2);
        assert!(etag_matches(&etag, &etag));
        assert!(etag_matches(&format!("\"x\", W/{etag}"), &etag));
        assert!(etag_matches("*", &etag));
        assert!(!etag_matches(&etag2, &etag));
        let (body, _) = models_response(Some(&json!([{"slug": "x"}])), true);
        assert_eq!(body["models"][0]["prefer_websockets"], true);
        let (body, _) = models_response(None, false);
        assert_eq!(body["models"][0]["prefer_websockets"], false);
    }
}
