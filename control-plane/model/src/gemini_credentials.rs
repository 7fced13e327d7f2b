//! Gemini CLI's credential file: `~/.gemini/oauth_creds.json`, google-auth-library's
//! `Credentials` JSON (`{access_token, refresh_token, scope, token_type, id_token,
//! expiry_date (unix ms)}`), optionally with a `project_id` (the Code Assist project; the
//! format codex-pool keeps its Gemini accounts in, and what `account export` writes).
//!
//! Rules: the login is the id token's `sub` (its `email` the account's email) when the file
//! has an id token; without one, a fingerprint of the refresh token (`gemini:` + 16 hex
//! digits of its SHA-256). The id token's signature is not checked (see
//! [`crate::credentials`]). Field errors name the field (`expiry_date is not a number`).

use serde_json::Value;

use crate::credentials::{decode_jwt_payload, fingerprint, FieldError, Fields, LoginCredentials};
use crate::records::{CredentialKind, Provider};

/// The scopes a Gemini CLI login asks for (written by [`render`] when exporting).
pub const LOGIN_SCOPES: &str = "https://www.googleapis.com/auth/cloud-platform \
     https://www.googleapis.com/auth/userinfo.email \
     https://www.googleapis.com/auth/userinfo.profile openid";

#[derive(Debug, thiserror::Error)]
pub enum GeminiFileError {
    #[error("not valid JSON ({0})")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("id_token is not a decodable JWT: {0}")]
    BadIdToken(String),
}

/// Parses a Gemini CLI `oauth_creds.json`.
pub fn parse(bytes: &[u8]) -> Result<LoginCredentials, GeminiFileError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| GeminiFileError::NotJson(e.to_string()))?;
    let obj = doc.as_object().ok_or(GeminiFileError::NotObject)?;
    let f = Fields { obj, prefix: "" };
    let access_token = f.required_str("access_token")?;
    let refresh_token = f.required_str("refresh_token")?;
    let expiry = f.optional_i64("expiry_date")?;
    f.optional_str("scope")?;
    f.optional_str("token_type")?;
    let project_id = f.optional_str("project_id")?;
    let plan = f.optional_str("plan_type")?;
    let id_token = f.optional_str("id_token")?.unwrap_or_default();
    let (sub, email) = if id_token.is_empty() {
        (None, None)
    } else {
        let claims = decode_jwt_payload(&id_token).map_err(GeminiFileError::BadIdToken)?;
        let text = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        (text("sub"), text("email"))
    };
    Ok(LoginCredentials {
        provider: Provider::Gemini,
        credential_kind: CredentialKind::Oauth,
        project_id,
        chatgpt_account_id: sub.unwrap_or_else(|| fingerprint("gemini", &refresh_token)),
        chatgpt_user_id: None,
        email,
        plan,
        id_token,
        access_token,
        refresh_token,
        access_token_expires_at_ms: expiry,
    })
}

/// An `oauth_creds.json` for these tokens, as Gemini CLI writes it, plus `project_id` when
/// known (Gemini CLI ignores it; an import reads it back).
pub fn render(
    access_token: &str,
    refresh_token: &str,
    id_token: &str,
    expiry_date_ms: Option<i64>,
    project_id: Option<&str>,
) -> String {
    let mut doc = serde_json::json!({
        "access_token": access_token,
        "refresh_token": refresh_token,
        "scope": LOGIN_SCOPES,
        "token_type": "Bearer",
        "expiry_date": expiry_date_ms,
    });
    if !id_token.is_empty() {
        doc["id_token"] = Value::String(id_token.to_owned());
    }
    if let Some(p) = project_id {
        doc["project_id"] = Value::String(p.to_owned());
    }
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{unsigned_jwt, FieldProblem};
    use serde_json::json;

    fn good() -> Value {
        json!({
            "access_token": "ya29.abc",
            "refresh_token": "1//def",
            "scope": LOGIN_SCOPES,
            "token_type": "Bearer",
            "id_token": unsigned_jwt(&json!({"sub": "1234567890", "email": "g@example.com"})),
            "expiry_date": 1_900_000_000_000_i64
        })
    }

    fn field_err(v: &Value) -> Option<FieldError> {
        match parse(v.to_string().as_bytes()) {
            Err(GeminiFileError::Field(e)) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn parses_a_google_login() -> Result<(), GeminiFileError> {
        let c = parse(good().to_string().as_bytes())?;
        assert_eq!(c.provider, Provider::Gemini);
        assert_eq!(c.credential_kind, CredentialKind::Oauth);
        assert_eq!(c.chatgpt_account_id, "1234567890");
        assert_eq!(c.email.as_deref(), Some("g@example.com"));
        assert_eq!(c.access_token_expires_at_ms, Some(1_900_000_000_000));
        assert_eq!(c.project_id, None);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("ya29.abc") && !dbg.contains("1//def"));
        Ok(())
    }

    #[test]
    fn without_an_id_token_the_login_is_a_fingerprint() -> Result<(), GeminiFileError> {
        let mut v = good();
        v.as_object_mut().map(|o| o.remove("id_token"));
        v["project_id"] = json!("proj-1");
        let c = parse(v.to_string().as_bytes())?;
        assert!(c.chatgpt_account_id.starts_with("gemini:"));
        assert_eq!(c.email, None);
        assert_eq!(c.project_id.as_deref(), Some("proj-1"));
        Ok(())
    }

    #[test]
    fn missing_and_mistyped_fields_name_their_path() {
        for key in ["access_token", "refresh_token"] {
            let mut v = good();
            v.as_object_mut().map(|o| o.remove(key));
            assert_eq!(
                field_err(&v).map(|e| e.to_string()),
                Some(format!("{key} is missing"))
            );
        }
        let mut v = good();
        v["expiry_date"] = json!("soon");
        assert_eq!(
            field_err(&v).map(|e| (e.path, e.problem)),
            Some(("expiry_date".into(), FieldProblem::NotNumber))
        );
        let mut v = good();
        v["project_id"] = json!(12);
        assert_eq!(
            field_err(&v).map(|e| e.to_string()),
            Some("project_id is not a string".into())
        );
        let mut v = good();
        v["id_token"] = json!("not-a-jwt");
        assert!(matches!(
            parse(v.to_string().as_bytes()),
            Err(GeminiFileError::BadIdToken(_))
        ));
        assert!(matches!(parse(b"{x"), Err(GeminiFileError::NotJson(_))));
        assert!(matches!(parse(b"\"s\""), Err(GeminiFileError::NotObject)));
    }

    #[test]
    fn rendered_files_parse_back() -> Result<(), GeminiFileError> {
        let id = unsigned_jwt(&json!({"sub": "42"}));
        let text = render("at", "rt", &id, Some(9), Some("p-9"));
        let c = parse(text.as_bytes())?;
        assert_eq!(
            (c.access_token.as_str(), c.refresh_token.as_str()),
            ("at", "rt")
        );
        assert_eq!(c.chatgpt_account_id, "42");
        assert_eq!(c.project_id.as_deref(), Some("p-9"));
        assert_eq!(c.access_token_expires_at_ms, Some(9));
        Ok(())
    }
}
