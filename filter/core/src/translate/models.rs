//! `GET /v1/models` and `GET /v1/models/{id}` from the Codex backend's model list
//! (`GET /codex/models?client_version=X` → `{"models":[{"slug","display_name",...}]}`).
//!
//! Rules this module keeps:
//! - Every entry with a string `slug` becomes `{"id":slug,"object":"model","created":0,
//!   "owned_by":"openai"}`, in the backend's order; entries without a slug are skipped. Hidden
//!   entries (`visibility: "hide"`) are listed too: the backend serves them by slug all the same.
//! - `created` is 0: the backend gives no date, and a made-up one would change between calls.
//! - A lookup of a slug the list lacks is a 404 `model_not_found` in OpenAI's shape.
//! - A backend answer that is not `{"models":[...]}` is a 502 `bad_upstream_response`.

use serde_json::{json, Value};

use super::ApiError;

/// `owned_by` of every listed model.
pub const OWNED_BY: &str = "openai";

fn entries(codex_body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let v: Value = serde_json::from_slice(codex_body)
        .map_err(|e| ApiError::bad_upstream(&format!("model list: {e}")))?;
    let Some(models) = v.get("models").and_then(Value::as_array) else {
        return Err(ApiError::bad_upstream("model list without 'models'"));
    };
    Ok(models
        .iter()
        .filter_map(|m| m.get("slug").and_then(Value::as_str))
        .map(model_object)
        .collect())
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": OWNED_BY})
}

/// The `GET /v1/models` body.
pub fn models_list(codex_body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let data = entries(codex_body)?;
    Ok(json!({"object": "list", "data": data})
        .to_string()
        .into_bytes())
}

/// The `GET /v1/models/{id}` body, or 404 `model_not_found`.
pub fn model_entry(codex_body: &[u8], id: &str) -> Result<Vec<u8>, ApiError> {
    entries(codex_body)?
        .into_iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(id))
        .map(|m| m.to_string().into_bytes())
        .ok_or_else(|| ApiError::model_not_found(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const BODY: &[u8] = br#"{"models":[{"slug":"a","display_name":"A"},{"display_name":"none"},{"slug":"b","visibility":"hide"}]}"#;

    #[test]
    fn list_and_lookup() {
        let v: Value = serde_json::from_slice(&models_list(BODY).unwrap()).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["data"][1]["id"], "b");
        let m: Value = serde_json::from_slice(&model_entry(BODY, "a").unwrap()).unwrap();
        assert_eq!(
            m,
            json!({"id":"a","object":"model","created":0,"owned_by":"openai"})
        );
        let err = model_entry(BODY, "zzz").unwrap_err();
        assert_eq!(
            (err.status, err.code.as_deref()),
            (404, Some("model_not_found"))
        );
        assert_eq!(models_list(b"{}").unwrap_err().status, 502);
        assert_eq!(models_list(b"<html>").unwrap_err().status, 502);
    }
}
