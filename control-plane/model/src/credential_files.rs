//! Telling the three providers' credential files apart by content ([`detect`]) and parsing one
//! ([`parse_file`]): Codex `auth.json`, Claude Code `.credentials.json` or API key, Gemini CLI
//! `oauth_creds.json`.
//!
//! Rules: a file is recognised by its content, never by its name alone; a provider asked for
//! that the content contradicts is an error naming both; the parsers' errors pass through.

use serde_json::Value;

use crate::credentials::{parse, AuthJsonError, LoginCredentials, MAX_FILE_BYTES};
use crate::records::Provider;

/// Why a credential file of any provider is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CredentialFileError {
    #[error("file is larger than 1 MiB: not a credential file")]
    TooLarge,
    #[error("{0}")]
    Codex(#[from] AuthJsonError),
    #[error("{0}")]
    Claude(#[from] crate::claude_credentials::ClaudeFileError),
    #[error("{0}")]
    Gemini(#[from] crate::gemini_credentials::GeminiFileError),
    #[error(
        "this is a {detected} credential file, not a {requested} one (drop the provider \
         choice, or import the {requested} file)"
    )]
    ProviderMismatch {
        requested: Provider,
        detected: Provider,
    },
    #[error(
        "not a credential file this gateway knows: expected a Codex auth.json (\"tokens\"), \
         a Claude Code .credentials.json (\"claudeAiOauth\") or API key (\"api_key\"), or a \
         Gemini CLI oauth_creds.json (\"access_token\", \"refresh_token\")"
    )]
    Unrecognised,
}

/// Whose credential file this is, by its content: a `tokens` object is Codex's auth.json;
/// `claudeAiOauth` or `api_key` (or a bare `sk-ant-` key) is Claude Code's; top-level
/// `access_token` with `refresh_token` (google-auth-library's shape) is Gemini CLI's.
pub fn detect(bytes: &[u8]) -> Option<Provider> {
    let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
        return crate::claude_credentials::bare_api_key(bytes).map(|_| Provider::Claude);
    };
    let obj = doc.as_object()?;
    if obj.contains_key("tokens") || obj.contains_key("auth_mode") {
        Some(Provider::Codex)
    } else if obj.contains_key("claudeAiOauth") || obj.contains_key("api_key") {
        Some(Provider::Claude)
    } else if obj.contains_key("access_token") || obj.contains_key("refresh_token") {
        Some(Provider::Gemini)
    } else {
        None
    }
}

/// Parses a credential file of `provider`, or of whichever provider its content says when
/// `provider` is None. A provider the content contradicts is
/// [`CredentialFileError::ProviderMismatch`]; content no provider claims is parsed as the
/// requested provider's file (so its error names what is missing), else
/// [`CredentialFileError::Unrecognised`].
pub fn parse_file(
    bytes: &[u8],
    provider: Option<Provider>,
) -> Result<LoginCredentials, CredentialFileError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(CredentialFileError::TooLarge);
    }
    let detected = detect(bytes);
    let provider = match (provider, detected) {
        (Some(requested), Some(detected)) if requested != detected => {
            return Err(CredentialFileError::ProviderMismatch {
                requested,
                detected,
            })
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => {
            // Not JSON at all reads best as the Codex parser's "not valid JSON".
            if serde_json::from_slice::<Value>(bytes).is_err() {
                return Err(parse(bytes).err().map_or(
                    CredentialFileError::Unrecognised,
                    CredentialFileError::Codex,
                ));
            }
            return Err(CredentialFileError::Unrecognised);
        }
    };
    Ok(match provider {
        Provider::Codex => parse(bytes)?,
        Provider::Claude => crate::claude_credentials::parse(bytes)?,
        Provider::Gemini => crate::gemini_credentials::parse(bytes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::unsigned_jwt;
    use crate::records::CredentialKind;
    use serde_json::json;

    fn codex_file() -> Vec<u8> {
        let ns = "https://api.openai.com/auth";
        json!({
            "auth_mode": "chatgpt",
            "tokens": {
                "id_token": unsigned_jwt(&json!({ns: {"chatgpt_account_id": "acct-1"}})),
                "access_token": unsigned_jwt(&json!({"exp": 5})),
                "refresh_token": "rt",
                "account_id": "acct-1"
            }
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn files_are_told_apart_by_content() {
        let codex = codex_file();
        let claude = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r"}}"#;
        let key = br#"{"api_key":"sk-ant-api03-k"}"#;
        let gemini = br#"{"access_token":"ya29.x","refresh_token":"1//y","expiry_date":1}"#;
        assert_eq!(detect(&codex), Some(Provider::Codex));
        assert_eq!(detect(claude), Some(Provider::Claude));
        assert_eq!(detect(key), Some(Provider::Claude));
        assert_eq!(detect(b"sk-ant-api03-k\n"), Some(Provider::Claude));
        assert_eq!(detect(gemini), Some(Provider::Gemini));
        assert_eq!(detect(b"{}"), None);
        assert_eq!(detect(b"hello"), None);

        let parsed = |b: &[u8], p| parse_file(b, p).map(|c| (c.provider, c.credential_kind));
        assert!(matches!(
            parsed(&codex, None),
            Ok((Provider::Codex, CredentialKind::Oauth))
        ));
        assert!(matches!(
            parsed(claude, None),
            Ok((Provider::Claude, CredentialKind::Oauth))
        ));
        assert!(matches!(
            parsed(key, Some(Provider::Claude)),
            Ok((Provider::Claude, CredentialKind::ApiKey))
        ));
        assert!(matches!(
            parsed(gemini, None),
            Ok((Provider::Gemini, CredentialKind::Oauth))
        ));
        let mismatch = parse_file(claude, Some(Provider::Gemini)).err();
        assert!(matches!(
            mismatch,
            Some(CredentialFileError::ProviderMismatch {
                requested: Provider::Gemini,
                detected: Provider::Claude
            })
        ));
        assert_eq!(
            mismatch.map(|e| e.to_string()).unwrap_or_default(),
            "this is a claude credential file, not a gemini one (drop the provider choice, or \
             import the gemini file)"
        );
        assert!(matches!(
            parse_file(b"{}", None),
            Err(CredentialFileError::Unrecognised)
        ));
        assert!(matches!(
            parse_file(b"{nope", None),
            Err(CredentialFileError::Codex(AuthJsonError::NotJson(_)))
        ));
        // An unclaimed shape parsed as the asked-for provider names what is missing.
        assert_eq!(
            parse_file(b"{}", Some(Provider::Gemini))
                .err()
                .map(|e| e.to_string()),
            Some("access_token is missing".into())
        );
        let big = vec![b' '; (MAX_FILE_BYTES + 1) as usize];
        assert!(matches!(
            parse_file(&big, None),
            Err(CredentialFileError::TooLarge)
        ));
    }
}
