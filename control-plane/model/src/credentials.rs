//! Credentials: what an import needs from a login ([`LoginCredentials`], any provider), the
//! path-naming field access the providers' parsers share, and Codex `auth.json` (ChatGPT login)
//! parsing with the JWT claims we need from it. Claude Code's `.credentials.json` is read in
//! [`crate::claude_credentials`], Gemini CLI's `oauth_creds.json` in
//! [`crate::gemini_credentials`], and [`crate::credential_files`] tells the three apart.
//!
//! Rules: a field error names the field's path in the file (`claudeAiOauth.expiresAt`); no
//! type here prints a token.
//!
//! The JWTs are decoded without verifying their signatures: ChatGPT's signing keys are not ours to
//! check against, and the tokens only matter to the upstream that issued them. The claims are used
//! for bookkeeping (account id, plan, email, expiry), never for an authorisation decision here.

use base64::Engine;
use serde_json::{Map, Value};

use crate::records::{CredentialKind, Provider};

const AUTH_CLAIMS: &str = "https://api.openai.com/auth";
const PROFILE_CLAIMS: &str = "https://api.openai.com/profile";
/// A real auth.json is a few KB; anything far larger is not one.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AuthJsonError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("file is larger than 1 MiB: not a Codex auth.json")]
    TooLarge,
    #[error("not valid JSON ({0})")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("auth_mode is {0:?}, not a ChatGPT login (log in with `codex login` using ChatGPT)")]
    NotChatgpt(String),
    #[error("missing the \"tokens\" object (is this a Codex auth.json from a ChatGPT login?)")]
    MissingTokens,
    #[error("tokens.{0} is missing, empty or not a string")]
    MissingToken(&'static str),
    #[error("tokens.{which} is not a decodable JWT: {reason}")]
    BadJwt { which: &'static str, reason: String },
    #[error(
        "no ChatGPT account id: neither the token claims ({AUTH_CLAIMS} chatgpt_account_id) nor tokens.account_id carry one"
    )]
    NoAccountId,
    #[error(
        "tokens.account_id {file:?} does not match the account id in the token claims {claims:?}"
    )]
    AccountIdMismatch { file: String, claims: String },
}

/// What an import needs from a credential file of any provider. `Debug` hides the tokens.
#[derive(Clone)]
pub struct LoginCredentials {
    /// Whose login it is.
    pub provider: Provider,
    /// OAuth tokens, or an API key (in `access_token`; `refresh_token` and `id_token` empty).
    pub credential_kind: CredentialKind,
    /// Gemini: the Code Assist project, when the file names one.
    pub project_id: Option<String>,
    /// Empty when the provider issues none (Claude).
    pub id_token: String,
    pub access_token: String,
    /// Empty for an API key.
    pub refresh_token: String,
    /// The provider's id of the login (stored as `chatgpt_account_id`): the ChatGPT account
    /// id, a Claude fingerprint (`claude:…`), the Google subject.
    pub chatgpt_account_id: String,
    pub chatgpt_user_id: Option<String>,
    pub email: Option<String>,
    pub plan: Option<String>,
    /// From the access token's `exp`, as unix milliseconds.
    pub access_token_expires_at_ms: Option<i64>,
}

/// The name [`LoginCredentials`] had when only Codex logins existed.
pub type CodexCredentials = LoginCredentials;

impl std::fmt::Debug for LoginCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCredentials")
            .field("provider", &self.provider)
            .field("credential_kind", &self.credential_kind)
            .field("project_id", &self.project_id)
            .field("chatgpt_account_id", &self.chatgpt_account_id)
            .field("chatgpt_user_id", &self.chatgpt_user_id)
            .field("email", &self.email)
            .field("plan", &self.plan)
            .field(
                "access_token_expires_at_ms",
                &self.access_token_expires_at_ms,
            )
            .finish_non_exhaustive()
    }
}

/// Parses a Codex `auth.json`.
pub fn parse(bytes: &[u8]) -> Result<LoginCredentials, AuthJsonError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| AuthJsonError::NotJson(e.to_string()))?;
    let doc = doc.as_object().ok_or(AuthJsonError::NotObject)?;

    // Older files have no auth_mode; newer ones say "chatgpt" (or a chatgpt* variant).
    if let Some(mode) = doc.get("auth_mode").and_then(Value::as_str) {
        if !mode.to_ascii_lowercase().starts_with("chatgpt") {
            return Err(AuthJsonError::NotChatgpt(mode.to_owned()));
        }
    }
    let tokens = doc
        .get("tokens")
        .and_then(Value::as_object)
        .ok_or(AuthJsonError::MissingTokens)?;

    let id_token = required_str(tokens, "id_token")?;
    let access_token = required_str(tokens, "access_token")?;
    let refresh_token = required_str(tokens, "refresh_token")?;
    let file_account_id = tokens
        .get("account_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());

    let id_claims = decode_jwt_payload(&id_token).map_err(|reason| AuthJsonError::BadJwt {
        which: "id_token",
        reason,
    })?;
    let access_claims =
        decode_jwt_payload(&access_token).map_err(|reason| AuthJsonError::BadJwt {
            which: "access_token",
            reason,
        })?;

    let claim = |key: &str| auth_claim(&id_claims, key).or_else(|| auth_claim(&access_claims, key));
    let chatgpt_account_id = match (claim("chatgpt_account_id"), file_account_id) {
        (Some(c), Some(f)) if c != f => {
            return Err(AuthJsonError::AccountIdMismatch {
                file: f.to_owned(),
                claims: c,
            })
        }
        (Some(c), _) => c,
        (None, Some(f)) => f.to_owned(),
        (None, None) => return Err(AuthJsonError::NoAccountId),
    };

    let email = str_claim(&id_claims, "email")
        .or_else(|| str_claim(&access_claims, "email"))
        .or_else(|| {
            access_claims
                .get(PROFILE_CLAIMS)
                .and_then(|p| p.get("email"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        });

    let access_token_expires_at_ms = access_claims.get("exp").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(|secs| secs.saturating_mul(1000))
    });

    Ok(LoginCredentials {
        provider: Provider::Codex,
        credential_kind: CredentialKind::Oauth,
        project_id: None,
        chatgpt_user_id: claim("chatgpt_user_id").or_else(|| claim("user_id")),
        plan: claim("chatgpt_plan_type"),
        id_token,
        access_token,
        refresh_token,
        chatgpt_account_id,
        email,
        access_token_expires_at_ms,
    })
}

/// A field of a credential file that is missing or of the wrong type, named by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} {problem}")]
pub struct FieldError {
    /// Dotted path in the file, e.g. `claudeAiOauth.accessToken`.
    pub path: String,
    pub problem: FieldProblem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldProblem {
    Missing,
    Empty,
    NotString,
    NotNumber,
    NotObject,
    NotStringArray,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FieldProblem::Missing => "is missing",
            FieldProblem::Empty => "is empty",
            FieldProblem::NotString => "is not a string",
            FieldProblem::NotNumber => "is not a number",
            FieldProblem::NotObject => "is not an object",
            FieldProblem::NotStringArray => "is not an array of strings",
        })
    }
}

/// Typed, path-naming access to one JSON object of a credential file.
pub(crate) struct Fields<'a> {
    pub obj: &'a Map<String, Value>,
    /// The object's own path with a trailing dot (`claudeAiOauth.`), or empty at the top.
    pub prefix: &'a str,
}

impl Fields<'_> {
    fn err(&self, key: &str, problem: FieldProblem) -> FieldError {
        FieldError {
            path: format!("{}{key}", self.prefix),
            problem,
        }
    }

    /// A non-empty string (trimmed).
    pub fn required_str(&self, key: &str) -> Result<String, FieldError> {
        self.optional_str(key)?
            .ok_or_else(|| self.err(key, FieldProblem::Missing))
    }

    /// A string when present and not null; present but empty is an error.
    pub fn optional_str(&self, key: &str) -> Result<Option<String>, FieldError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.err(key, FieldProblem::Empty))
            }
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(_) => Err(self.err(key, FieldProblem::NotString)),
        }
    }

    /// A whole number (a float is truncated) when present and not null.
    pub fn optional_i64(&self, key: &str) -> Result<Option<i64>, FieldError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| self.err(key, FieldProblem::NotNumber)),
        }
    }

    /// An array of strings when present and not null.
    pub fn optional_strings(&self, key: &str) -> Result<Option<Vec<String>>, FieldError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.err(key, FieldProblem::NotStringArray)),
            Some(_) => Err(self.err(key, FieldProblem::NotStringArray)),
        }
    }
}

/// A short stable fingerprint of a secret: `{prefix}:` and the first 16 hex digits of its
/// SHA-256. Identifies a login whose file carries no account id, without storing the secret.
pub fn fingerprint(prefix: &str, secret: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    format!("{prefix}:{}", &digest[..16])
}

/// The access token's `exp` as unix milliseconds, when it is a JWT that carries one.
pub fn jwt_expiry_ms(token: &str) -> Option<i64> {
    decode_jwt_payload(token).ok()?.get("exp").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(|secs| secs.saturating_mul(1000))
    })
}

/// What an id token says about its login (plan, email, ChatGPT account id), if it decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdClaims {
    pub plan: Option<String>,
    pub email: Option<String>,
    pub chatgpt_account_id: Option<String>,
}

pub fn id_claims(id_token: &str) -> IdClaims {
    let Ok(claims) = decode_jwt_payload(id_token) else {
        return IdClaims::default();
    };
    IdClaims {
        plan: auth_claim(&claims, "chatgpt_plan_type"),
        email: str_claim(&claims, "email"),
        chatgpt_account_id: auth_claim(&claims, "chatgpt_account_id"),
    }
}

/// A Codex `auth.json` (ChatGPT login) for these tokens, as the Codex CLI writes it.
pub fn render(
    id_token: &str,
    access_token: &str,
    refresh_token: &str,
    account_id: &str,
    last_refresh: &str,
) -> String {
    let doc = serde_json::json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": id_token,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "account_id": account_id,
        },
        "last_refresh": last_refresh,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string());
    s.push('\n');
    s
}

fn required_str(tokens: &Map<String, Value>, key: &'static str) -> Result<String, AuthJsonError> {
    tokens
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or(AuthJsonError::MissingToken(key))
}

fn auth_claim(claims: &Map<String, Value>, key: &str) -> Option<String> {
    claims
        .get(AUTH_CLAIMS)
        .and_then(|ns| ns.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn str_claim(claims: &Map<String, Value>, key: &str) -> Option<String> {
    claims
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The claims (payload) of a JWS compact token, as a JSON object. No signature or claim is
/// validated (see the module comment); `jsonwebtoken` still requires a well-formed token: three
/// dot-separated base64url parts whose header names a JWS algorithm it knows.
pub fn decode_jwt_payload(token: &str) -> Result<Map<String, Value>, String> {
    jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

/// Test support: a JWT carrying `claims` with a placeholder signature (header `RS256`, like the
/// tokens ChatGPT issues; nothing here verifies signatures). Public so integration tests and the
/// simulator can mint tokens of the right shape.
pub fn unsigned_jwt(claims: &Value) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.sig",
        b64(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64(claims)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id_token(account: &str) -> String {
        unsigned_jwt(&json!({
            "email": "alice@example.com",
            AUTH_CLAIMS: {
                "chatgpt_account_id": account,
                "chatgpt_plan_type": "plus",
                "chatgpt_user_id": "user-1"
            }
        }))
    }

    fn access_token(exp: i64) -> String {
        unsigned_jwt(&json!({
            "exp": exp,
            AUTH_CLAIMS: {"chatgpt_account_id": "acct-1"}
        }))
    }

    fn file(tokens: Value) -> Vec<u8> {
        json!({
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": null,
            "tokens": tokens,
            "last_refresh": "2026-01-01T00:00:00Z"
        })
        .to_string()
        .into_bytes()
    }

    fn good_tokens() -> Value {
        json!({
            "id_token": id_token("acct-1"),
            "access_token": access_token(2_000_000_000),
            "refresh_token": "rt_abc",
            "account_id": "acct-1"
        })
    }

    #[test]
    fn parses_a_good_file() -> Result<(), AuthJsonError> {
        let c = parse(&file(good_tokens()))?;
        assert_eq!(c.chatgpt_account_id, "acct-1");
        assert_eq!(c.email.as_deref(), Some("alice@example.com"));
        assert_eq!(c.plan.as_deref(), Some("plus"));
        assert_eq!(c.chatgpt_user_id.as_deref(), Some("user-1"));
        assert_eq!(c.access_token_expires_at_ms, Some(2_000_000_000_000));
        assert_eq!(c.refresh_token, "rt_abc");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("rt_abc") && !dbg.contains(&c.access_token));
        Ok(())
    }

    #[test]
    fn account_id_falls_back_to_the_file_field() -> Result<(), AuthJsonError> {
        let mut t = good_tokens();
        t["id_token"] = json!(unsigned_jwt(&json!({"email": "a@b.c"})));
        t["access_token"] = json!(unsigned_jwt(&json!({"exp": 1})));
        let c = parse(&file(t))?;
        assert_eq!(c.chatgpt_account_id, "acct-1");
        assert_eq!(c.plan, None);
        Ok(())
    }

    #[test]
    fn malformed_kinds() {
        assert!(matches!(parse(b"{nope"), Err(AuthJsonError::NotJson(_))));
        assert!(matches!(parse(b"[1]"), Err(AuthJsonError::NotObject)));
        assert!(matches!(
            parse(br#"{"auth_mode":"apikey","OPENAI_API_KEY":"sk-x"}"#),
            Err(AuthJsonError::NotChatgpt(_))
        ));
        assert!(matches!(
            parse(br#"{"auth_mode":"chatgpt"}"#),
            Err(AuthJsonError::MissingTokens)
        ));
        let mut t = good_tokens();
        t.as_object_mut().map(|o| o.remove("refresh_token"));
        assert!(matches!(
            parse(&file(t)),
            Err(AuthJsonError::MissingToken("refresh_token"))
        ));
        let mut t = good_tokens();
        t["access_token"] = json!("");
        assert!(matches!(
            parse(&file(t)),
            Err(AuthJsonError::MissingToken("access_token"))
        ));
        let mut t = good_tokens();
        t["id_token"] = json!("not-a-jwt");
        assert!(matches!(
            parse(&file(t)),
            Err(AuthJsonError::BadJwt {
                which: "id_token",
                ..
            })
        ));
        let mut t = good_tokens();
        t["access_token"] = json!("a.!!!.c");
        assert!(matches!(
            parse(&file(t)),
            Err(AuthJsonError::BadJwt {
                which: "access_token",
                ..
            })
        ));
        let mut t = good_tokens();
        t["id_token"] = json!(unsigned_jwt(&json!({"email": "x@y.z"})));
        t["access_token"] = json!(unsigned_jwt(&json!({"exp": 5})));
        t.as_object_mut().map(|o| o.remove("account_id"));
        assert!(matches!(parse(&file(t)), Err(AuthJsonError::NoAccountId)));
        let mut t = good_tokens();
        t["account_id"] = json!("acct-other");
        assert!(matches!(
            parse(&file(t)),
            Err(AuthJsonError::AccountIdMismatch { .. })
        ));
    }

    #[test]
    fn rendered_files_parse_back() -> Result<(), AuthJsonError> {
        let t = good_tokens();
        let text = render(
            t["id_token"].as_str().unwrap_or_default(),
            t["access_token"].as_str().unwrap_or_default(),
            "rt_new",
            "acct-1",
            "2026-01-01T00:00:00Z",
        );
        let c = parse(text.as_bytes())?;
        assert_eq!(c.refresh_token, "rt_new");
        assert_eq!(c.chatgpt_account_id, "acct-1");
        assert_eq!(jwt_expiry_ms(&c.access_token), Some(2_000_000_000_000));
        let claims = id_claims(&c.id_token);
        assert_eq!(claims.plan.as_deref(), Some("plus"));
        assert_eq!(claims.email.as_deref(), Some("alice@example.com"));
        assert_eq!(claims.chatgpt_account_id.as_deref(), Some("acct-1"));
        assert_eq!(id_claims("junk"), IdClaims::default());
        Ok(())
    }

    #[test]
    fn jwt_payload_errors_are_described() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"RS256","typ":"JWT"}"#);
        for bad in [
            "".to_owned(),
            "a.b".to_owned(),
            "a.%%%.c".to_owned(),
            format!("{header}.%%%.c"),
            format!("{header}.{}.c", b64("not json")),
            format!("{header}.{}.c", b64("[1,2]")),
            format!("{}.{}.c", b64("{}"), b64("{}")),
        ] {
            let err = decode_jwt_payload(&bad).err().unwrap_or_default();
            assert!(!err.is_empty(), "{bad:?} decoded");
        }
        let ok = format!("{header}.{}.c", b64(r#"{"email":"a@b.c"}"#));
        assert_eq!(
            decode_jwt_payload(&ok)
                .ok()
                .and_then(|c| c.get("email").cloned()),
            Some(json!("a@b.c"))
        );
    }

    #[test]
    fn expiry_is_optional_and_may_be_fractional() {
        assert_eq!(
            jwt_expiry_ms(&unsigned_jwt(&json!({"email": "a@b.c"}))),
            None
        );
        assert_eq!(
            jwt_expiry_ms(&unsigned_jwt(&json!({"exp": 1.5}))),
            Some(1000)
        );
        assert_eq!(jwt_expiry_ms(&unsigned_jwt(&json!({"exp": "soon"}))), None);
        assert_eq!(jwt_expiry_ms("not-a-jwt"), None);
    }

    #[test]
    fn fingerprints_are_stable_short_and_hide_the_secret() {
        let f = fingerprint("claude", "sk-ant-ort01-secret");
        assert_eq!(f, fingerprint("claude", "sk-ant-ort01-secret"));
        assert_ne!(f, fingerprint("claude", "sk-ant-ort01-other"));
        assert_eq!(f.len(), "claude:".len() + 16);
        assert!(!f.contains("secret"));
    }
}
