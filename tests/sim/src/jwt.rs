//! JWTs shaped like the ones auth.openai.com issues (HS256 with a simulator secret; clients
//! read the claims without verifying the signature).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The claim namespace Codex reads the ChatGPT identity from.
pub const AUTH_CLAIM: &str = "https://api.openai.com/auth";
/// The profile claim namespace.
pub const PROFILE_CLAIM: &str = "https://api.openai.com/profile";
/// The OAuth client id of the Codex CLI.
pub const CODEX_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// Issuer written into tokens.
pub const ISSUER: &str = "https://auth.openai.com";

/// Who a token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// ChatGPT account (workspace) id.
    pub account_id: String,
    /// ChatGPT user id.
    pub user_id: String,
    /// Email address.
    pub email: String,
    /// Plan type (free, plus, pro, team, ...).
    pub plan: String,
}

/// Which token to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The bearer for the backend.
    Access,
    /// The OpenID identity token.
    Id,
}

/// The claims of a Google OpenID id_token (what `oauth2.googleapis.com/token` returns).
pub fn google_id_claims(who: &Identity, iat: i64, exp: i64) -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "azp": "sim-gemini-cli.apps.googleusercontent.com",
        "aud": "sim-gemini-cli.apps.googleusercontent.com",
        "sub": who.user_id,
        "email": who.email,
        "email_verified": true,
        "iat": iat,
        "exp": exp,
    })
}

/// Build the claims of a token.
pub fn claims(kind: TokenKind, who: &Identity, iat: i64, exp: i64, jti: &str) -> Value {
    let auth = json!({
        "chatgpt_account_id": who.account_id,
        "chatgpt_plan_type": who.plan,
        "chatgpt_user_id": who.user_id,
        "user_id": who.user_id,
    });
    match kind {
        TokenKind::Access => json!({
            "iss": ISSUER,
            "aud": ["https://api.openai.com/v1"],
            "sub": who.user_id,
            "client_id": CODEX_CLIENT_ID,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": jti,
            "email": who.email,
            "scp": ["openid", "profile", "email", "offline_access"],
            "session_id": format!("authsess_{jti}"),
            AUTH_CLAIM: auth,
            PROFILE_CLAIM: { "email": who.email, "email_verified": true },
        }),
        TokenKind::Id => json!({
            "iss": ISSUER,
            "aud": [CODEX_CLIENT_ID],
            "sub": who.user_id,
            "iat": iat,
            "auth_time": iat,
            "exp": exp,
            "jti": jti,
            "email": who.email,
            "email_verified": true,
            AUTH_CLAIM: auth,
        }),
    }
}

/// Sign claims as an HS256 JWT.
pub fn encode(claims: &Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let sig = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        // HMAC accepts keys of any length; keep a well-formed token regardless.
        Err(_) => String::new(),
    };
    format!("{signing_input}.{sig}")
}

/// Read the claims of a JWT without verifying it (what clients do).
pub fn decode_unverified(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Check an HS256 signature made with `secret`.
pub fn verify(token: &str, secret: &[u8]) -> bool {
    let mut parts = token.rsplitn(2, '.');
    let (Some(sig), Some(input)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(input.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Identity {
        Identity {
            account_id: "acc-1".into(),
            user_id: "user-1".into(),
            email: "a@example.test".into(),
            plan: "pro".into(),
        }
    }

    #[test]
    fn access_token_carries_codex_claims() {
        let token = encode(&claims(TokenKind::Access, &who(), 100, 3700, "j1"), b"k");
        assert_eq!(token.split('.').count(), 3);
        let c = decode_unverified(&token).unwrap();
        assert_eq!(c["exp"], 3700);
        assert_eq!(c["iat"], 100);
        assert_eq!(c["email"], "a@example.test");
        assert_eq!(c[AUTH_CLAIM]["chatgpt_account_id"], "acc-1");
        assert_eq!(c[AUTH_CLAIM]["chatgpt_plan_type"], "pro");
        assert_eq!(c[AUTH_CLAIM]["chatgpt_user_id"], "user-1");
        assert!(verify(&token, b"k"));
        assert!(!verify(&token, b"other"));
    }

    #[test]
    fn id_token_has_identity() {
        let token = encode(&claims(TokenKind::Id, &who(), 1, 2, "j2"), b"k");
        let c = decode_unverified(&token).unwrap();
        assert_eq!(c["email"], "a@example.test");
        assert_eq!(c["aud"][0], CODEX_CLIENT_ID);
        assert_eq!(c[AUTH_CLAIM]["chatgpt_account_id"], "acc-1");
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(decode_unverified("nope").is_none());
        assert!(!verify("a.b", b"k"));
    }
}
