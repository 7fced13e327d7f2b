//! The kinds of account a pool holds (Codex, Claude, Gemini) and what differs between them when an
//! attempt leaves the gateway: which credential headers it carries.
//!
//! Rules kept here:
//! - An account serves only requests of its own provider: an endpoint names one provider
//!   (`endpoints::EndpointSpec::provider`) and ranking runs over that provider's accounts only
//!   (`snapshot::SnapshotIndex::lane`). An account whose provider this build does not know is in
//!   no lane, so its credential is never sent anywhere.
//! - Credentials are set per attempt and overwrite whatever an earlier attempt set: Envoy hands
//!   every attempt the same request headers, so each attempt sets or removes every header a
//!   credential kind uses ([`credential_headers`]).
//! - The pool key (`authorization`, `x-api-key`, `x-goog-api-key`) is gone before this runs
//!   (`headers`); everything else the client sent (`anthropic-version`, user agents, the query)
//!   passes unchanged, except `anthropic-beta`, to which an OAuth attempt adds the betas Anthropic
//!   requires of an OAuth token (`claude::merge_beta`).

use crate::claude;
use crate::pb;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// ChatGPT's Codex backend (the default: accounts from before providers existed).
    #[default]
    Codex,
    /// Anthropic (Claude Code subscription OAuth or an API key).
    Claude,
    /// Google Code Assist (Gemini CLI's Google login).
    Gemini,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Self::Codex, Self::Claude, Self::Gemini];

    /// The account's provider; `None` for a provider number this build does not know.
    pub fn of_account(account: &pb::Account) -> Option<Self> {
        match pb::Provider::try_from(account.provider) {
            Ok(pb::Provider::Codex) => Some(Self::Codex),
            Ok(pb::Provider::Claude) => Some(Self::Claude),
            Ok(pb::Provider::Gemini) => Some(Self::Gemini),
            Err(_) => None,
        }
    }

    /// Position in [`Provider::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::Codex => 0,
            Self::Claude => 1,
            Self::Gemini => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Codex => "codex",
            Self::Claude => "claude",
            Self::Gemini => "gemini",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The upstream's name in messages.
    pub fn upstream_name(self) -> &'static str {
        match self {
            Self::Codex => "The Codex backend",
            Self::Claude => "The Anthropic API",
            Self::Gemini => "Google Code Assist",
        }
    }
}

/// One change to an attempt's request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Set(&'static str, String),
    Remove(&'static str),
}

/// Whether the account authenticates with an API key rather than an OAuth access token.
pub fn is_api_key(account: &pb::Account) -> bool {
    account.credential_kind == pb::CredentialKind::ApiKey as i32
}

/// The header changes that put `account`'s credential on an attempt. `client_beta` is the
/// `anthropic-beta` value the client sent (not what an earlier attempt left).
pub fn credential_headers(
    provider: Provider,
    account: &pb::Account,
    client_beta: Option<&str>,
) -> Vec<HeaderOp> {
    let bearer = || format!("Bearer {}", account.access_token);
    match provider {
        Provider::Codex => vec![
            HeaderOp::Set("authorization", bearer()),
            HeaderOp::Set("chatgpt-account-id", account.chatgpt_account_id.clone()),
        ],
        Provider::Claude if is_api_key(account) => {
            let mut ops = vec![
                HeaderOp::Set("x-api-key", account.access_token.clone()),
                HeaderOp::Remove("authorization"),
            ];
            ops.push(match client_beta {
                Some(beta) => HeaderOp::Set("anthropic-beta", beta.to_string()),
                None => HeaderOp::Remove("anthropic-beta"),
            });
            ops
        }
        Provider::Claude => vec![
            HeaderOp::Set("authorization", bearer()),
            HeaderOp::Remove("x-api-key"),
            HeaderOp::Set(
                "anthropic-beta",
                claude::merge_beta(client_beta, claude::OAUTH_BETAS),
            ),
        ],
        Provider::Gemini => vec![HeaderOp::Set("authorization", bearer())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn account(provider: pb::Provider, kind: pb::CredentialKind) -> pb::Account {
        pb::Account {
            id: "a".into(),
            access_token: "tok".into(),
            chatgpt_account_id: "acct".into(),
            provider: provider as i32,
            credential_kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn providers_come_from_the_account_and_unknown_ones_are_none() {
        let mut a = account(pb::Provider::Claude, pb::CredentialKind::Oauth);
        assert_eq!(Provider::of_account(&a), Some(Provider::Claude));
        a.provider = 0;
        assert_eq!(Provider::of_account(&a), Some(Provider::Codex));
        a.provider = 2;
        assert_eq!(Provider::of_account(&a), Some(Provider::Gemini));
        a.provider = 77;
        assert_eq!(Provider::of_account(&a), None);
        for p in Provider::ALL {
            assert_eq!(Provider::from_name(p.as_str()), Some(p));
            assert_eq!(Provider::ALL[p.index()], p);
        }
    }

    #[test]
    fn codex_gets_its_bearer_and_account_id() {
        let a = account(pb::Provider::Codex, pb::CredentialKind::Oauth);
        assert_eq!(
            credential_headers(Provider::Codex, &a, None),
            vec![
                HeaderOp::Set("authorization", "Bearer tok".into()),
                HeaderOp::Set("chatgpt-account-id", "acct".into()),
            ]
        );
    }

    #[test]
    fn claude_oauth_is_a_bearer_with_the_oauth_betas_and_no_api_key() {
        let a = account(pb::Provider::Claude, pb::CredentialKind::Oauth);
        let ops = credential_headers(
            Provider::Claude,
            &a,
            Some("claude-code-20250219,oauth-2025-04-20"),
        );
        assert_eq!(
            ops,
            vec![
                HeaderOp::Set("authorization", "Bearer tok".into()),
                HeaderOp::Remove("x-api-key"),
                HeaderOp::Set(
                    "anthropic-beta",
                    "claude-code-20250219,oauth-2025-04-20,extended-cache-ttl-2025-04-11".into()
                ),
            ]
        );
        let bare = credential_headers(Provider::Claude, &a, None);
        assert_eq!(
            bare[2],
            HeaderOp::Set(
                "anthropic-beta",
                "oauth-2025-04-20,extended-cache-ttl-2025-04-11".into()
            )
        );
    }

    #[test]
    fn claude_api_key_is_x_api_key_and_restores_the_clients_betas() {
        let a = account(pb::Provider::Claude, pb::CredentialKind::ApiKey);
        assert_eq!(
            credential_headers(Provider::Claude, &a, Some("claude-code-20250219")),
            vec![
                HeaderOp::Set("x-api-key", "tok".into()),
                HeaderOp::Remove("authorization"),
                // An earlier OAuth attempt's additions are undone.
                HeaderOp::Set("anthropic-beta", "claude-code-20250219".into()),
            ]
        );
        assert_eq!(
            credential_headers(Provider::Claude, &a, None)[2],
            HeaderOp::Remove("anthropic-beta")
        );
    }

    #[test]
    fn gemini_is_a_bearer() {
        let a = account(pb::Provider::Gemini, pb::CredentialKind::Oauth);
        assert_eq!(
            credential_headers(Provider::Gemini, &a, Some("ignored")),
            vec![HeaderOp::Set("authorization", "Bearer tok".into())]
        );
    }
}
