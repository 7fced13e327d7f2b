//! Claude Code's credential files: the `.credentials.json` a subscription login writes
//! (`{"claudeAiOauth":{accessToken, refreshToken, expiresAt (unix ms), scopes,
//! subscriptionType, rateLimitTier}}`) and an API key (`{"api_key":"sk-ant-api…"}`, or a file
//! holding just the key).
//!
//! Rules: the file carries no account id, so a login is known by a fingerprint of the refresh
//! token it was first imported with (`claude:` + 16 hex digits of its SHA-256; an API key by
//! `claude-key:` + the same of the key). A later rotation of that refresh token has another
//! fingerprint and cannot be matched to the account by content: re-import it with the
//! account's label. Field errors name the path (`claudeAiOauth.expiresAt is not a number`).

use serde_json::Value;

use crate::credentials::{fingerprint, FieldError, Fields, LoginCredentials};
use crate::records::{CredentialKind, Provider};

/// The scopes a Claude Code login asks for (written by [`render`] when exporting).
pub const LOGIN_SCOPES: &[&str] = &[
    "user:inference",
    "user:profile",
    "user:sessions:claude_code",
    "user:mcp_servers",
    "user:file_upload",
];

#[derive(Debug, thiserror::Error)]
pub enum ClaudeFileError {
    #[error("not valid JSON ({0}) and not a bare Claude API key (sk-ant-…)")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error(
        "neither a \"claudeAiOauth\" object (Claude Code .credentials.json) nor an \"api_key\" \
         (is this a Claude Code credential file?)"
    )]
    NoCredential,
    #[error("{0}")]
    Field(#[from] FieldError),
}

/// A bare API key: the whole file is one `sk-ant-` token (surrounding whitespace ignored).
pub fn bare_api_key(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    (text.starts_with("sk-ant-")
        && text.len() > "sk-ant-".len()
        && !text.chars().any(|c| c.is_whitespace() || c.is_control()))
    .then(|| text.to_owned())
}

/// Parses a Claude Code `.credentials.json`, an `{"api_key":…}` file or a bare key.
pub fn parse(bytes: &[u8]) -> Result<LoginCredentials, ClaudeFileError> {
    let doc: Value = match serde_json::from_slice(bytes) {
        Ok(doc) => doc,
        Err(e) => {
            return bare_api_key(bytes)
                .map(|key| api_key_login(&key))
                .ok_or_else(|| ClaudeFileError::NotJson(e.to_string()))
        }
    };
    let doc = doc.as_object().ok_or(ClaudeFileError::NotObject)?;
    let top = Fields {
        obj: doc,
        prefix: "",
    };
    if let Some(oauth) = doc.get("claudeAiOauth") {
        let obj = oauth.as_object().ok_or_else(|| FieldError {
            path: "claudeAiOauth".into(),
            problem: crate::credentials::FieldProblem::NotObject,
        })?;
        let f = Fields {
            obj,
            prefix: "claudeAiOauth.",
        };
        let access_token = f.required_str("accessToken")?;
        let refresh_token = f.required_str("refreshToken")?;
        let expires_at = f.optional_i64("expiresAt")?;
        f.optional_strings("scopes")?;
        let plan = f.optional_str("subscriptionType")?;
        f.optional_str("rateLimitTier")?;
        return Ok(LoginCredentials {
            provider: Provider::Claude,
            credential_kind: CredentialKind::Oauth,
            project_id: None,
            id_token: String::new(),
            chatgpt_account_id: fingerprint("claude", &refresh_token),
            access_token,
            refresh_token,
            chatgpt_user_id: None,
            email: None,
            plan,
            access_token_expires_at_ms: expires_at,
        });
    }
    match top.optional_str("api_key")? {
        Some(key) => Ok(api_key_login(&key)),
        None => Err(ClaudeFileError::NoCredential),
    }
}

fn api_key_login(key: &str) -> LoginCredentials {
    LoginCredentials {
        provider: Provider::Claude,
        credential_kind: CredentialKind::ApiKey,
        project_id: None,
        id_token: String::new(),
        access_token: key.to_owned(),
        refresh_token: String::new(),
        chatgpt_account_id: fingerprint("claude-key", key),
        chatgpt_user_id: None,
        email: None,
        plan: None,
        access_token_expires_at_ms: None,
    }
}

/// A Claude Code `.credentials.json` for these tokens, as the CLI writes it.
pub fn render(
    access_token: &str,
    refresh_token: &str,
    expires_at_ms: Option<i64>,
    subscription_type: Option<&str>,
) -> String {
    let doc = serde_json::json!({
        "claudeAiOauth": {
            "accessToken": access_token,
            "refreshToken": refresh_token,
            "expiresAt": expires_at_ms,
            "scopes": LOGIN_SCOPES,
            "subscriptionType": subscription_type,
        }
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::FieldProblem;
    use serde_json::json;

    fn file(oauth: Value) -> Vec<u8> {
        json!({ "claudeAiOauth": oauth }).to_string().into_bytes()
    }

    fn good() -> Value {
        json!({
            "accessToken": "sk-ant-oat01-abc",
            "refreshToken": "sk-ant-ort01-def",
            "expiresAt": 1_900_000_000_000_i64,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x"
        })
    }

    fn field_err(bytes: &[u8]) -> Option<FieldError> {
        match parse(bytes) {
            Err(ClaudeFileError::Field(e)) => Some(e),
            _ => None,
        }
    }

    #[test]
    fn parses_a_subscription_login() -> Result<(), ClaudeFileError> {
        let c = parse(&file(good()))?;
        assert_eq!(c.provider, Provider::Claude);
        assert_eq!(c.credential_kind, CredentialKind::Oauth);
        assert_eq!(c.access_token, "sk-ant-oat01-abc");
        assert_eq!(c.refresh_token, "sk-ant-ort01-def");
        assert_eq!(c.access_token_expires_at_ms, Some(1_900_000_000_000));
        assert_eq!(c.plan.as_deref(), Some("max"));
        assert!(c.chatgpt_account_id.starts_with("claude:"));
        assert_eq!(c.chatgpt_account_id.len(), "claude:".len() + 16);
        // Stable: the same refresh token is the same login.
        assert_eq!(
            parse(&file(good()))?.chatgpt_account_id,
            c.chatgpt_account_id
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-ant-oat01-abc") && !dbg.contains("sk-ant-ort01-def"));
        Ok(())
    }

    #[test]
    fn parses_api_keys_in_both_forms() -> Result<(), ClaudeFileError> {
        let a = parse(br#"{"api_key":"sk-ant-api03-xyz"}"#)?;
        let b = parse(b"  sk-ant-api03-xyz\n")?;
        for c in [&a, &b] {
            assert_eq!(c.credential_kind, CredentialKind::ApiKey);
            assert_eq!(c.access_token, "sk-ant-api03-xyz");
            assert!(c.refresh_token.is_empty());
            assert_eq!(c.access_token_expires_at_ms, None);
            assert!(c.chatgpt_account_id.starts_with("claude-key:"));
        }
        assert_eq!(a.chatgpt_account_id, b.chatgpt_account_id);
        Ok(())
    }

    #[test]
    fn missing_and_mistyped_fields_name_their_path() {
        for (key, problem) in [
            ("accessToken", FieldProblem::Missing),
            ("refreshToken", FieldProblem::Missing),
        ] {
            let mut o = good();
            o.as_object_mut().map(|m| m.remove(key));
            let e = field_err(&file(o));
            assert_eq!(
                e.as_ref().map(|e| (e.path.as_str(), e.problem)),
                Some((format!("claudeAiOauth.{key}").as_str(), problem))
            );
            assert_eq!(
                e.map(|e| e.to_string()),
                Some(format!("claudeAiOauth.{key} is missing"))
            );
        }
        let mut o = good();
        o["expiresAt"] = json!("tomorrow");
        assert_eq!(
            field_err(&file(o)).map(|e| e.to_string()),
            Some("claudeAiOauth.expiresAt is not a number".into())
        );
        let mut o = good();
        o["accessToken"] = json!(42);
        assert_eq!(
            field_err(&file(o)).map(|e| e.to_string()),
            Some("claudeAiOauth.accessToken is not a string".into())
        );
        let mut o = good();
        o["scopes"] = json!("user:inference");
        assert_eq!(
            field_err(&file(o)).map(|e| e.path),
            Some("claudeAiOauth.scopes".into())
        );
        let mut o = good();
        o["refreshToken"] = json!("  ");
        assert_eq!(
            field_err(&file(o)).map(|e| e.problem),
            Some(FieldProblem::Empty)
        );
        assert_eq!(
            field_err(br#"{"claudeAiOauth":[1]}"#).map(|e| e.to_string()),
            Some("claudeAiOauth is not an object".into())
        );
        assert_eq!(
            field_err(br#"{"api_key":7}"#).map(|e| e.to_string()),
            Some("api_key is not a string".into())
        );
    }

    #[test]
    fn other_shapes_are_refused() {
        assert!(matches!(parse(b"{nope"), Err(ClaudeFileError::NotJson(_))));
        assert!(matches!(
            parse(b"sk-ant- two words"),
            Err(ClaudeFileError::NotJson(_))
        ));
        assert!(matches!(parse(b"[1]"), Err(ClaudeFileError::NotObject)));
        assert!(matches!(parse(b"{}"), Err(ClaudeFileError::NoCredential)));
    }

    #[test]
    fn rendered_files_parse_back() -> Result<(), ClaudeFileError> {
        let text = render("at", "rt", Some(5), Some("pro"));
        let c = parse(text.as_bytes())?;
        assert_eq!(c.access_token, "at");
        assert_eq!(c.refresh_token, "rt");
        assert_eq!(c.access_token_expires_at_ms, Some(5));
        assert_eq!(c.plan.as_deref(), Some("pro"));
        Ok(())
    }
}
