//! Simulated accounts (ChatGPT, Claude, Gemini), their tokens and refresh-token lineages.
//!
//! A *lineage* is one login: it starts with a refresh token and rotates through a new refresh
//! token at every successful refresh. Replaying a consumed refresh token revokes the whole
//! lineage (every access and refresh token issued in it stops working), as the real auth
//! server does. A new login (`POST /__sim/accounts/{id}/login`) starts a fresh lineage.
//!
//! Every account has a [`Provider`]; its tokens look like that provider's (Codex JWTs, Claude
//! `sk-ant-oat01-…`/`sk-ant-ort01-…` or an `sk-ant-api03-…` API key, Google `ya29.…`/`1//…`)
//! and are only accepted by that provider's endpoints. A Claude API key never expires and has
//! no refresh token. Google refresh tokens are kept across refreshes unless the caller asks
//! for rotation ([`Registry::finish_refresh_with`]); a kept token is never "consumed".

use std::collections::{BTreeMap, HashMap, VecDeque};

use rand::distr::Alphanumeric;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::rfc3339;
use crate::jwt::{self, Identity, TokenKind};
use crate::quota::{Quota, WindowView, DEFAULT_PRIMARY_LIMIT, DEFAULT_SECONDARY_LIMIT};
use crate::quota::{PRIMARY_WINDOW_SECS, SECONDARY_WINDOW_SECS};

/// Default access-token lifetime: 1 hour of simulated time.
pub const DEFAULT_ACCESS_TTL_SECS: i64 = 3600;
/// Default Claude OAuth access-token lifetime: 8 hours (what issue reports say).
pub const CLAUDE_ACCESS_TTL_SECS: i64 = 8 * 3600;
/// Default Google access-token lifetime: 3599 s, as `oauth2.googleapis.com` answers.
pub const GOOGLE_ACCESS_TTL_SECS: i64 = 3599;
/// Gemini's daily quota window.
pub const GEMINI_DAILY_WINDOW_SECS: i64 = 1440 * 60;

/// Whose account this is: which upstream it stands in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ChatGPT / Codex (the default).
    #[default]
    Codex,
    /// Anthropic (Claude Code).
    Claude,
    /// Google Code Assist (Gemini CLI).
    Gemini,
}

impl Provider {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Codex => "codex",
            Self::Claude => "claude",
            Self::Gemini => "gemini",
        }
    }
}

/// How a Claude account authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An OAuth subscription login (access + refresh token).
    #[default]
    Oauth,
    /// An API key (`sk-ant-api03-…`), sent as `x-api-key`.
    ApiKey,
}

/// Credits as the `x-codex-credits-*` headers and `/wham/usage` report them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credits {
    /// Whether the account has purchased credits left.
    pub has_credits: bool,
    /// Whether credits are unlimited.
    pub unlimited: bool,
    /// Balance as a decimal string, if any.
    pub balance: Option<String>,
}

impl Default for Credits {
    fn default() -> Self {
        Self {
            has_credits: false,
            unlimited: false,
            balance: Some("0".to_string()),
        }
    }
}

/// A scripted answer for the next refresh of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshFailure {
    /// `refresh_token_expired`, `refresh_token_invalidated`, `refresh_token_reused`,
    /// `invalid_grant` (these four kill the lineage) or anything else (e.g. `server_error`),
    /// which changes nothing.
    #[serde(default)]
    pub error: Option<String>,
    /// HTTP status; default 401 for the four permanent errors, else 500.
    #[serde(default)]
    pub status: Option<u16>,
    /// Replace the whole answer body.
    #[serde(default)]
    pub body: Option<Value>,
}

impl RefreshFailure {
    /// Whether this failure leaves the presented refresh token dead.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.error.as_deref(),
            Some(
                "refresh_token_expired"
                    | "refresh_token_invalidated"
                    | "refresh_token_reused"
                    | "invalid_grant"
            )
        )
    }
}

/// Accept `"refresh_token_expired"`, `503` or `{"error":..,"status":..,"body":..}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RefreshFailureSpec {
    /// Just an error code.
    Code(String),
    /// Just a status.
    Status(u16),
    /// The full form.
    Full(RefreshFailure),
}

impl From<RefreshFailureSpec> for RefreshFailure {
    fn from(spec: RefreshFailureSpec) -> Self {
        match spec {
            RefreshFailureSpec::Code(code) => RefreshFailure {
                error: Some(code),
                status: None,
                body: None,
            },
            RefreshFailureSpec::Status(status) => RefreshFailure {
                error: None,
                status: Some(status),
                body: None,
            },
            RefreshFailureSpec::Full(f) => f,
        }
    }
}

/// The live credentials of a lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenSet {
    /// JWT bearer for the backend.
    pub access_token: String,
    /// OpenID identity JWT.
    pub id_token: String,
    /// Opaque, single-use refresh token.
    pub refresh_token: String,
    /// Expiry of the access token (unix seconds).
    pub access_token_expires_at: i64,
    /// Lineage number.
    pub lineage: u64,
    /// When the set was issued (unix seconds).
    pub issued_at: i64,
}

/// One simulated account.
#[derive(Debug, Clone)]
pub struct Account {
    /// ChatGPT account id (the `chatgpt-account-id` header value).
    pub id: String,
    /// Which upstream the account belongs to.
    pub provider: Provider,
    /// OAuth or API key (Claude; always OAuth for the others).
    pub credential: CredentialKind,
    /// Gemini's Code Assist project (`None` for the others).
    pub project_id: Option<String>,
    /// Anthropic account and organization UUIDs (token answers, `/api/oauth/profile`).
    pub account_uuid: String,
    /// See [`Account::account_uuid`].
    pub organization_uuid: String,
    /// The `client_id` and `client_secret` of the last call to the Google token endpoint.
    pub last_client: Option<(String, String)>,
    /// ChatGPT user id.
    pub user_id: String,
    /// Email.
    pub email: String,
    /// Plan type.
    pub plan: String,
    /// Usage windows.
    pub quota: Quota,
    /// Credits.
    pub credits: Credits,
    /// Access-token lifetime (simulated seconds).
    pub access_ttl_secs: i64,
    /// Refresh-token lifetime, if limited.
    pub refresh_ttl_secs: Option<i64>,
    /// The newest token set.
    pub current: TokenSet,
    /// Every call to the token endpoint that named one of this account's refresh tokens.
    pub refresh_calls: u64,
    /// Successful refreshes.
    pub refresh_successes: u64,
    /// Successful model turns (and compactions).
    pub turns: u64,
    /// Logins (lineages started).
    pub logins: u64,
    /// Scripted refresh failures, used first to last.
    pub fail_next_refresh: VecDeque<RefreshFailure>,
    /// Delay before the token endpoint answers for this account.
    pub refresh_delay_ms: Option<u64>,
    /// Reply text for this account's turns (overrides the global one).
    pub reply_text: Option<String>,
}

impl Account {
    /// The identity written into tokens.
    pub fn identity(&self) -> Identity {
        Identity {
            account_id: self.id.clone(),
            user_id: self.user_id.clone(),
            email: self.email.clone(),
            plan: self.plan.clone(),
        }
    }
}

/// Why a lineage was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// A consumed refresh token was replayed.
    RefreshTokenReused,
    /// A scripted permanent refresh failure.
    RefreshFailure,
    /// The control API said so.
    Operator,
}

#[derive(Debug, Clone)]
struct Lineage {
    revoked: Option<RevokeReason>,
}

#[derive(Debug, Clone)]
struct AccessRecord {
    account_id: String,
    lineage: u64,
    exp: i64,
}

#[derive(Debug, Clone)]
struct RefreshRecord {
    account_id: String,
    lineage: u64,
    expires_at: Option<i64>,
    consumed: bool,
}

/// Options for a new account (all optional on the wire).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// Account id; default a random UUID.
    pub account_id: Option<String>,
    /// `codex` (default), `claude` or `gemini`.
    pub provider: Option<Provider>,
    /// Claude only: `oauth` (default) or `api_key`.
    pub credential: Option<CredentialKind>,
    /// Gemini only: the Code Assist project (default `sim-project-<id>`).
    pub project_id: Option<String>,
    /// Email; default `<user>@sim.codexmesh.test`.
    pub email: Option<String>,
    /// Plan; default `plus`.
    pub plan: Option<String>,
    /// Units per primary window.
    pub primary_limit: Option<u64>,
    /// Units per secondary window.
    pub secondary_limit: Option<u64>,
    /// Primary window length (default 18000 s).
    pub primary_window_secs: Option<i64>,
    /// Secondary window length (default 604800 s).
    pub secondary_window_secs: Option<i64>,
    /// Units per turn (default 1).
    pub cost_per_turn: Option<u64>,
    /// Access-token lifetime (default 3600 s).
    pub access_token_ttl_secs: Option<i64>,
    /// Refresh-token lifetime (default unlimited).
    pub refresh_token_ttl_secs: Option<i64>,
    /// Credits.
    pub credits: Option<Credits>,
    /// Reply text for this account.
    pub reply_text: Option<String>,
}

/// Changes to an account (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    /// Email (new tokens only).
    pub email: Option<String>,
    /// Plan (new tokens, 429 bodies and `/wham/usage`).
    pub plan: Option<String>,
    /// Units per primary window.
    pub primary_limit: Option<u64>,
    /// Units per secondary window.
    pub secondary_limit: Option<u64>,
    /// Units used in the primary window.
    pub primary_used: Option<u64>,
    /// Units used in the secondary window.
    pub secondary_used: Option<u64>,
    /// Move the primary reset.
    pub primary_reset_at: Option<i64>,
    /// Move the secondary reset.
    pub secondary_reset_at: Option<i64>,
    /// Units per turn.
    pub cost_per_turn: Option<u64>,
    /// Empty both windows.
    #[serde(default)]
    pub reset_quota: bool,
    /// Access-token lifetime for tokens issued from now on.
    pub access_token_ttl_secs: Option<i64>,
    /// Refresh-token lifetime for tokens issued from now on (`null` keeps it).
    pub refresh_token_ttl_secs: Option<i64>,
    /// Credits.
    pub credits: Option<Credits>,
    /// Revoke the current lineage (its tokens stop working).
    #[serde(default)]
    pub revoke: bool,
    /// Make the current access token expired now.
    #[serde(default)]
    pub expire_access_token: bool,
    /// Append scripted refresh failures.
    pub fail_next_refresh: Option<Vec<RefreshFailureSpec>>,
    /// Drop scripted refresh failures.
    #[serde(default)]
    pub clear_refresh_failures: bool,
    /// Delay the token endpoint for this account (0 clears).
    pub refresh_delay_ms: Option<u64>,
    /// Reply text for this account ("" clears).
    pub reply_text: Option<String>,
}

/// Why an access token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Never issued by this simulator.
    Unknown,
    /// Past its `exp` on the simulated clock.
    Expired {
        /// Owner.
        account_id: String,
    },
    /// Its lineage was revoked.
    Revoked {
        /// Owner.
        account_id: String,
    },
}

/// Why a refresh is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshDenied {
    /// Unknown refresh token.
    Unknown,
    /// A consumed token was replayed; the lineage is now revoked.
    Reused,
    /// The lineage was revoked earlier.
    Invalidated,
    /// Past the refresh-token lifetime.
    Expired,
    /// A scripted failure.
    Scripted(RefreshFailure),
}

/// All accounts and every token the simulator issued.
#[derive(Debug)]
pub struct Registry {
    accounts: BTreeMap<String, Account>,
    access: HashMap<String, AccessRecord>,
    refresh: HashMap<String, RefreshRecord>,
    lineages: Vec<Lineage>,
    secret: Vec<u8>,
    /// Token-endpoint calls with a refresh token nobody issued.
    pub unknown_refresh_calls: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// `n` random ASCII letters and digits.
pub fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A random version-4 UUID.
pub fn random_uuid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

impl Registry {
    /// An empty registry with a random signing secret.
    pub fn new() -> Self {
        Self {
            accounts: BTreeMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            lineages: Vec::new(),
            secret: random_alnum(32).into_bytes(),
            unknown_refresh_calls: 0,
        }
    }

    /// The HS256 secret tokens are signed with.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Create an account and its first login. Fails if the id is taken or a number is bad.
    pub fn create(&mut self, opts: NewAccount, now: i64) -> Result<&Account, String> {
        let id = opts.account_id.unwrap_or_else(random_uuid);
        if id.trim().is_empty() {
            return Err("account_id must not be empty".into());
        }
        if self.accounts.contains_key(&id) {
            return Err(format!("account {id} already exists"));
        }
        let provider = opts.provider.unwrap_or_default();
        if opts.credential.is_some() && provider != Provider::Claude {
            return Err("credential is only for claude accounts".into());
        }
        if opts.project_id.is_some() && provider != Provider::Gemini {
            return Err("project_id is only for gemini accounts".into());
        }
        if opts
            .project_id
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err("project_id must not be empty".into());
        }
        let access_ttl = opts.access_token_ttl_secs.unwrap_or(match provider {
            Provider::Codex => DEFAULT_ACCESS_TTL_SECS,
            Provider::Claude => CLAUDE_ACCESS_TTL_SECS,
            Provider::Gemini => GOOGLE_ACCESS_TTL_SECS,
        });
        if access_ttl <= 0 {
            return Err("access_token_ttl_secs must be > 0".into());
        }
        let default_primary = match provider {
            Provider::Gemini => GEMINI_DAILY_WINDOW_SECS,
            Provider::Codex | Provider::Claude => PRIMARY_WINDOW_SECS,
        };
        let pw = opts.primary_window_secs.unwrap_or(default_primary);
        let sw = opts.secondary_window_secs.unwrap_or(SECONDARY_WINDOW_SECS);
        if pw <= 0 || sw <= 0 {
            return Err("window lengths must be > 0".into());
        }
        let user_id = format!("user-{}", random_alnum(24));
        let email = opts
            .email
            .unwrap_or_else(|| format!("{}@sim.codexmesh.test", user_id.to_ascii_lowercase()));
        let mut quota = Quota::new(
            opts.primary_limit.unwrap_or(DEFAULT_PRIMARY_LIMIT),
            opts.secondary_limit.unwrap_or(DEFAULT_SECONDARY_LIMIT),
            pw,
            sw,
            now,
        );
        quota.cost_per_turn = opts.cost_per_turn.unwrap_or(1);
        let placeholder = TokenSet {
            access_token: String::new(),
            id_token: String::new(),
            refresh_token: String::new(),
            access_token_expires_at: 0,
            lineage: 0,
            issued_at: now,
        };
        let project_id = (provider == Provider::Gemini).then(|| {
            opts.project_id.clone().unwrap_or_else(|| {
                let slug: String = id
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(20)
                    .collect::<String>()
                    .to_ascii_lowercase();
                format!("sim-project-{slug}")
            })
        });
        let account = Account {
            id: id.clone(),
            provider,
            credential: opts.credential.unwrap_or_default(),
            project_id,
            account_uuid: random_uuid(),
            organization_uuid: random_uuid(),
            last_client: None,
            user_id,
            email,
            plan: opts.plan.unwrap_or_else(|| "plus".to_string()),
            quota,
            credits: opts.credits.unwrap_or_default(),
            access_ttl_secs: access_ttl,
            refresh_ttl_secs: opts.refresh_token_ttl_secs,
            current: placeholder,
            refresh_calls: 0,
            refresh_successes: 0,
            turns: 0,
            logins: 0,
            fail_next_refresh: VecDeque::new(),
            refresh_delay_ms: None,
            reply_text: opts.reply_text,
        };
        self.accounts.insert(id.clone(), account);
        self.login(&id, now)?;
        self.accounts
            .get(&id)
            .ok_or_else(|| "account vanished".to_string())
    }

    /// Start a new lineage for an account (a fresh login) and return its tokens.
    pub fn login(&mut self, id: &str, now: i64) -> Result<TokenSet, String> {
        let lineage = self.lineages.len() as u64;
        self.lineages.push(Lineage { revoked: None });
        let set = self.issue(id, lineage, now)?;
        if let Some(acc) = self.accounts.get_mut(id) {
            acc.logins += 1;
        }
        Ok(set)
    }

    fn issue(&mut self, id: &str, lineage: u64, now: i64) -> Result<TokenSet, String> {
        self.issue_keeping(id, lineage, now, None)
    }

    /// Issue a token set; with `keep_refresh`, that refresh token stays the lineage's (no new
    /// one is made: Google's non-rotating refresh).
    fn issue_keeping(
        &mut self,
        id: &str,
        lineage: u64,
        now: i64,
        keep_refresh: Option<String>,
    ) -> Result<TokenSet, String> {
        let acc = self
            .accounts
            .get(id)
            .ok_or_else(|| format!("no account {id}"))?;
        let who = acc.identity();
        let api_key = acc.provider == Provider::Claude && acc.credential == CredentialKind::ApiKey;
        // An API key does not expire.
        let exp = if api_key {
            i64::MAX
        } else {
            now + acc.access_ttl_secs
        };
        let (access_token, id_token, refresh_token) = match acc.provider {
            Provider::Codex => (
                jwt::encode(
                    &jwt::claims(TokenKind::Access, &who, now, exp, &random_alnum(16)),
                    &self.secret,
                ),
                jwt::encode(
                    &jwt::claims(TokenKind::Id, &who, now, exp, &random_alnum(16)),
                    &self.secret,
                ),
                format!("rt_{}", random_alnum(48)),
            ),
            Provider::Claude if api_key => (
                format!("sk-ant-api03-{}-{}AA", random_alnum(86), random_alnum(6)),
                String::new(),
                String::new(),
            ),
            Provider::Claude => (
                format!("sk-ant-oat01-{}-{}AA", random_alnum(86), random_alnum(6)),
                String::new(),
                format!("sk-ant-ort01-{}-{}AA", random_alnum(86), random_alnum(6)),
            ),
            Provider::Gemini => (
                format!("ya29.a0{}", random_alnum(120)),
                jwt::encode(&jwt::google_id_claims(&who, now, exp), &self.secret),
                format!("1//0{}", random_alnum(100)),
            ),
        };
        let refresh_token = keep_refresh.unwrap_or(refresh_token);
        let refresh_expires = acc.refresh_ttl_secs.map(|ttl| now + ttl);
        self.access.insert(
            access_token.clone(),
            AccessRecord {
                account_id: id.to_string(),
                lineage,
                exp,
            },
        );
        if !refresh_token.is_empty() {
            let kept = self.refresh.get(&refresh_token).map(|r| r.expires_at);
            self.refresh.insert(
                refresh_token.clone(),
                RefreshRecord {
                    account_id: id.to_string(),
                    lineage,
                    expires_at: kept.unwrap_or(refresh_expires),
                    consumed: false,
                },
            );
        }
        let set = TokenSet {
            access_token,
            id_token,
            refresh_token,
            access_token_expires_at: exp,
            lineage,
            issued_at: now,
        };
        if let Some(acc) = self.accounts.get_mut(id) {
            acc.current = set.clone();
        }
        Ok(set)
    }

    /// An account by id.
    pub fn get(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// An account by id, mutable.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Account> {
        self.accounts.get_mut(id)
    }

    /// All accounts, ordered by id.
    pub fn all(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// Whether a lineage is revoked.
    pub fn lineage_revoked(&self, lineage: u64) -> Option<RevokeReason> {
        self.lineages.get(lineage as usize).and_then(|l| l.revoked)
    }

    fn revoke_lineage(&mut self, lineage: u64, reason: RevokeReason) {
        if let Some(l) = self.lineages.get_mut(lineage as usize) {
            if l.revoked.is_none() {
                l.revoked = Some(reason);
            }
        }
    }

    /// Which account issued this access token (live or not).
    pub fn owner_of_access_token(&self, token: &str) -> Option<&str> {
        self.access.get(token).map(|r| r.account_id.as_str())
    }

    /// Which account issued this refresh token (live or not).
    pub fn owner_of_refresh_token(&self, token: &str) -> Option<&str> {
        self.refresh.get(token).map(|r| r.account_id.as_str())
    }

    /// The provider of the account that issued this refresh token.
    pub fn provider_of_refresh_token(&self, token: &str) -> Option<Provider> {
        let id = self.owner_of_refresh_token(token)?;
        self.accounts.get(id).map(|a| a.provider)
    }

    /// The provider of the account that issued this access token (or API key).
    pub fn provider_of_access_token(&self, token: &str) -> Option<Provider> {
        let id = self.owner_of_access_token(token)?;
        self.accounts.get(id).map(|a| a.provider)
    }

    /// Accept a live access token and name its account.
    pub fn authenticate(&self, token: &str, now: i64) -> Result<&Account, AuthError> {
        let rec = self.access.get(token).ok_or(AuthError::Unknown)?;
        let acc = self
            .accounts
            .get(&rec.account_id)
            .ok_or(AuthError::Unknown)?;
        if self.lineage_revoked(rec.lineage).is_some() {
            return Err(AuthError::Revoked {
                account_id: rec.account_id.clone(),
            });
        }
        if now >= rec.exp {
            return Err(AuthError::Expired {
                account_id: rec.account_id.clone(),
            });
        }
        Ok(acc)
    }

    /// First half of a refresh: count the call and say how long to wait (the owner's
    /// account id and its delay). An unknown token is counted globally.
    pub fn begin_refresh(
        &mut self,
        refresh_token: &str,
    ) -> Result<(String, Option<u64>), RefreshDenied> {
        let Some(rec) = self.refresh.get(refresh_token) else {
            self.unknown_refresh_calls += 1;
            return Err(RefreshDenied::Unknown);
        };
        let id = rec.account_id.clone();
        let acc = self.accounts.get_mut(&id).ok_or(RefreshDenied::Unknown)?;
        acc.refresh_calls += 1;
        Ok((id, acc.refresh_delay_ms.filter(|d| *d > 0)))
    }

    /// Second half of a refresh: rotate, or refuse and apply the consequences.
    pub fn finish_refresh(
        &mut self,
        refresh_token: &str,
        now: i64,
    ) -> Result<TokenSet, RefreshDenied> {
        self.finish_refresh_with(refresh_token, now, true)
    }

    /// [`Registry::finish_refresh`], keeping the presented refresh token (not consumed, handed
    /// out again) unless `rotate`.
    pub fn finish_refresh_with(
        &mut self,
        refresh_token: &str,
        now: i64,
        rotate: bool,
    ) -> Result<TokenSet, RefreshDenied> {
        let rec = self
            .refresh
            .get(refresh_token)
            .cloned()
            .ok_or(RefreshDenied::Unknown)?;
        let scripted = self
            .accounts
            .get_mut(&rec.account_id)
            .and_then(|a| a.fail_next_refresh.pop_front());
        if let Some(failure) = scripted {
            if failure.is_permanent() {
                self.revoke_lineage(rec.lineage, RevokeReason::RefreshFailure);
                if let Some(r) = self.refresh.get_mut(refresh_token) {
                    r.consumed = true;
                }
            }
            return Err(RefreshDenied::Scripted(failure));
        }
        if rec.consumed {
            self.revoke_lineage(rec.lineage, RevokeReason::RefreshTokenReused);
            return Err(RefreshDenied::Reused);
        }
        if self.lineage_revoked(rec.lineage).is_some() {
            return Err(RefreshDenied::Invalidated);
        }
        if rec.expires_at.is_some_and(|t| now >= t) {
            return Err(RefreshDenied::Expired);
        }
        if rotate {
            if let Some(r) = self.refresh.get_mut(refresh_token) {
                r.consumed = true;
            }
        }
        let keep = (!rotate).then(|| refresh_token.to_string());
        let set = self
            .issue_keeping(&rec.account_id, rec.lineage, now, keep)
            .map_err(|_| RefreshDenied::Unknown)?;
        if let Some(acc) = self.accounts.get_mut(&rec.account_id) {
            acc.refresh_successes += 1;
        }
        Ok(set)
    }

    /// Apply a patch.
    pub fn patch(&mut self, id: &str, p: AccountPatch, now: i64) -> Result<(), String> {
        if p.access_token_ttl_secs.is_some_and(|t| t <= 0) {
            return Err("access_token_ttl_secs must be > 0".into());
        }
        let lineage = {
            let acc = self
                .accounts
                .get_mut(id)
                .ok_or_else(|| format!("no account {id}"))?;
            let q = &mut acc.quota;
            q.roll(now);
            if p.reset_quota {
                q.primary.used = 0;
                q.secondary.used = 0;
            }
            if let Some(v) = p.primary_limit {
                q.primary.limit = v;
            }
            if let Some(v) = p.secondary_limit {
                q.secondary.limit = v;
            }
            if let Some(v) = p.primary_used {
                q.primary.used = v;
            }
            if let Some(v) = p.secondary_used {
                q.secondary.used = v;
            }
            if let Some(v) = p.primary_reset_at {
                q.primary.reset_at = v;
            }
            if let Some(v) = p.secondary_reset_at {
                q.secondary.reset_at = v;
            }
            if let Some(v) = p.cost_per_turn {
                q.cost_per_turn = v;
            }
            if let Some(v) = p.email {
                acc.email = v;
            }
            if let Some(v) = p.plan {
                acc.plan = v;
            }
            if let Some(v) = p.access_token_ttl_secs {
                acc.access_ttl_secs = v;
            }
            if let Some(v) = p.refresh_token_ttl_secs {
                acc.refresh_ttl_secs = Some(v);
            }
            if let Some(v) = p.credits {
                acc.credits = v;
            }
            if p.clear_refresh_failures {
                acc.fail_next_refresh.clear();
            }
            if let Some(list) = p.fail_next_refresh {
                acc.fail_next_refresh
                    .extend(list.into_iter().map(Into::into));
            }
            if let Some(v) = p.refresh_delay_ms {
                acc.refresh_delay_ms = (v > 0).then_some(v);
            }
            if let Some(v) = p.reply_text {
                acc.reply_text = (!v.is_empty()).then_some(v);
            }
            if p.expire_access_token {
                acc.current.access_token_expires_at = now;
            }
            acc.current.lineage
        };
        if p.expire_access_token {
            let token = self
                .accounts
                .get(id)
                .map(|a| a.current.access_token.clone())
                .unwrap_or_default();
            if let Some(rec) = self.access.get_mut(&token) {
                rec.exp = now;
            }
        }
        if p.revoke {
            self.revoke_lineage(lineage, RevokeReason::Operator);
        }
        Ok(())
    }

    /// The control API's view of an account.
    pub fn view(&self, id: &str, now: i64) -> Option<AccountView> {
        let acc = self.accounts.get(id)?;
        let revoked = self.lineage_revoked(acc.current.lineage);
        let api_key = (acc.provider == Provider::Claude
            && acc.credential == CredentialKind::ApiKey)
            .then(|| acc.current.access_token.clone());
        Some(AccountView {
            account_id: acc.id.clone(),
            provider: acc.provider,
            credential: (acc.provider == Provider::Claude).then_some(acc.credential),
            project_id: acc.project_id.clone(),
            api_key,
            last_client_id: acc.last_client.as_ref().map(|c| c.0.clone()),
            last_client_secret: acc.last_client.as_ref().map(|c| c.1.clone()),
            user_id: acc.user_id.clone(),
            email: acc.email.clone(),
            plan: acc.plan.clone(),
            primary: window_view_rolled(&acc.quota.primary, now),
            secondary: window_view_rolled(&acc.quota.secondary, now),
            cost_per_turn: acc.quota.cost_per_turn,
            credits: acc.credits.clone(),
            access_token: acc.current.access_token.clone(),
            refresh_token: acc.current.refresh_token.clone(),
            id_token: acc.current.id_token.clone(),
            access_token_expires_at: finite(acc.current.access_token_expires_at),
            access_token_expired: now >= acc.current.access_token_expires_at,
            access_token_ttl_secs: acc.access_ttl_secs,
            refresh_token_ttl_secs: acc.refresh_ttl_secs,
            lineage: acc.current.lineage,
            revoked: revoked.is_some(),
            revoked_reason: revoked,
            refresh_calls: acc.refresh_calls,
            refresh_successes: acc.refresh_successes,
            turns: acc.turns,
            logins: acc.logins,
            fail_next_refresh: acc.fail_next_refresh.iter().cloned().collect(),
            refresh_delay_ms: acc.refresh_delay_ms,
            reply_text: acc.reply_text.clone(),
            last_refresh: rfc3339(acc.current.issued_at as f64),
        })
    }
}

/// An expiry, or `None` for "never" (an API key).
pub fn finite(exp: i64) -> Option<i64> {
    (exp != i64::MAX).then_some(exp)
}

fn window_view_rolled(w: &crate::quota::Window, now: i64) -> WindowView {
    let mut w = w.clone();
    w.roll(now);
    w.view(now)
}

/// What `GET /__sim/accounts/{id}` answers.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    /// Account id.
    pub account_id: String,
    /// `codex`, `claude` or `gemini`.
    pub provider: Provider,
    /// Claude: `oauth` or `api_key` (`null` for the others).
    pub credential: Option<CredentialKind>,
    /// Gemini: the Code Assist project.
    pub project_id: Option<String>,
    /// Claude API-key accounts: the key (also in `access_token`).
    pub api_key: Option<String>,
    /// Gemini: the `client_id` of the last token-endpoint call.
    pub last_client_id: Option<String>,
    /// Gemini: the `client_secret` of the last token-endpoint call.
    pub last_client_secret: Option<String>,
    /// User id.
    pub user_id: String,
    /// Email.
    pub email: String,
    /// Plan.
    pub plan: String,
    /// Primary window.
    pub primary: WindowView,
    /// Secondary window.
    pub secondary: WindowView,
    /// Units per turn.
    pub cost_per_turn: u64,
    /// Credits.
    pub credits: Credits,
    /// Newest access token.
    pub access_token: String,
    /// Newest refresh token.
    pub refresh_token: String,
    /// Newest id token.
    pub id_token: String,
    /// Expiry of the newest access token (`null`: never, an API key).
    pub access_token_expires_at: Option<i64>,
    /// Whether it has expired.
    pub access_token_expired: bool,
    /// Access-token lifetime.
    pub access_token_ttl_secs: i64,
    /// Refresh-token lifetime.
    pub refresh_token_ttl_secs: Option<i64>,
    /// Current lineage.
    pub lineage: u64,
    /// Whether the current lineage is revoked.
    pub revoked: bool,
    /// Why.
    pub revoked_reason: Option<RevokeReason>,
    /// Token-endpoint calls for this account.
    pub refresh_calls: u64,
    /// Successful refreshes.
    pub refresh_successes: u64,
    /// Successful turns.
    pub turns: u64,
    /// Logins.
    pub logins: u64,
    /// Pending scripted refresh failures.
    pub fail_next_refresh: Vec<RefreshFailure>,
    /// Token-endpoint delay.
    pub refresh_delay_ms: Option<u64>,
    /// Per-account reply text.
    pub reply_text: Option<String>,
    /// When the newest token set was issued (RFC 3339).
    pub last_refresh: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg_with(id: &str) -> (Registry, TokenSet) {
        let mut r = Registry::new();
        let acc = r
            .create(
                NewAccount {
                    account_id: Some(id.into()),
                    access_token_ttl_secs: Some(100),
                    ..Default::default()
                },
                1000,
            )
            .unwrap();
        let set = acc.current.clone();
        (r, set)
    }

    #[test]
    fn access_token_lives_until_exp() {
        let (r, set) = reg_with("a");
        assert_eq!(set.access_token_expires_at, 1100);
        assert_eq!(r.authenticate(&set.access_token, 1099).unwrap().id, "a");
        assert_eq!(
            r.authenticate(&set.access_token, 1100).unwrap_err(),
            AuthError::Expired {
                account_id: "a".into()
            }
        );
        assert_eq!(
            r.authenticate("nope", 1000).unwrap_err(),
            AuthError::Unknown
        );
        let claims = jwt::decode_unverified(&set.access_token).unwrap();
        assert_eq!(claims["exp"], 1100);
        assert!(jwt::verify(&set.access_token, r.secret()));
    }

    #[test]
    fn rotation_then_reuse_revokes_lineage() {
        let (mut r, first) = reg_with("a");
        r.begin_refresh(&first.refresh_token).unwrap();
        let second = r.finish_refresh(&first.refresh_token, 1050).unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        assert_eq!(second.access_token_expires_at, 1150);
        // Old access token still valid until its exp, new one too.
        assert!(r.authenticate(&first.access_token, 1060).is_ok());
        assert!(r.authenticate(&second.access_token, 1060).is_ok());
        // Replay the consumed token.
        r.begin_refresh(&first.refresh_token).unwrap();
        assert_eq!(
            r.finish_refresh(&first.refresh_token, 1060).unwrap_err(),
            RefreshDenied::Reused
        );
        // The whole lineage is dead: both access tokens and the newest refresh token.
        assert!(matches!(
            r.authenticate(&second.access_token, 1060),
            Err(AuthError::Revoked { .. })
        ));
        assert!(matches!(
            r.authenticate(&first.access_token, 1060),
            Err(AuthError::Revoked { .. })
        ));
        assert_eq!(
            r.finish_refresh(&second.refresh_token, 1060).unwrap_err(),
            RefreshDenied::Invalidated
        );
        let v = r.view("a", 1060).unwrap();
        assert!(v.revoked);
        assert_eq!(v.revoked_reason, Some(RevokeReason::RefreshTokenReused));
        assert_eq!(v.refresh_calls, 2);
        assert_eq!(v.refresh_successes, 1);
        // A new login works again.
        let fresh = r.login("a", 1070).unwrap();
        assert!(r.authenticate(&fresh.access_token, 1071).is_ok());
        assert!(!r.view("a", 1071).unwrap().revoked);
    }

    #[test]
    fn scripted_failures_are_used_in_order() {
        let (mut r, set) = reg_with("a");
        r.patch(
            "a",
            AccountPatch {
                fail_next_refresh: Some(vec![
                    RefreshFailureSpec::Status(503),
                    RefreshFailureSpec::Code("refresh_token_expired".into()),
                ]),
                ..Default::default()
            },
            1000,
        )
        .unwrap();
        let e = r.finish_refresh(&set.refresh_token, 1001).unwrap_err();
        assert!(matches!(
            e,
            RefreshDenied::Scripted(RefreshFailure {
                status: Some(503),
                ..
            })
        ));
        // Transient: token still usable afterwards... but next is a permanent failure.
        let e = r.finish_refresh(&set.refresh_token, 1002).unwrap_err();
        assert!(matches!(e, RefreshDenied::Scripted(ref f) if f.is_permanent()));
        assert!(r.view("a", 1002).unwrap().revoked);
    }

    #[test]
    fn refresh_token_ttl() {
        let mut r = Registry::new();
        let set = r
            .create(
                NewAccount {
                    account_id: Some("b".into()),
                    refresh_token_ttl_secs: Some(10),
                    ..Default::default()
                },
                0,
            )
            .unwrap()
            .current
            .clone();
        assert_eq!(
            r.finish_refresh(&set.refresh_token, 10).unwrap_err(),
            RefreshDenied::Expired
        );
        assert!(r.finish_refresh(&set.refresh_token, 9).is_ok());
    }

    #[test]
    fn unknown_refresh_is_counted_globally() {
        let (mut r, _) = reg_with("a");
        assert!(r.begin_refresh("rt_nope").is_err());
        assert_eq!(r.unknown_refresh_calls, 1);
        assert_eq!(
            r.finish_refresh("rt_nope", 0).unwrap_err(),
            RefreshDenied::Unknown
        );
    }

    #[test]
    fn operator_revoke_and_expire() {
        let (mut r, set) = reg_with("a");
        r.patch(
            "a",
            AccountPatch {
                expire_access_token: true,
                ..Default::default()
            },
            1010,
        )
        .unwrap();
        assert!(matches!(
            r.authenticate(&set.access_token, 1010),
            Err(AuthError::Expired { .. })
        ));
        r.patch(
            "a",
            AccountPatch {
                revoke: true,
                ..Default::default()
            },
            1010,
        )
        .unwrap();
        assert!(matches!(
            r.authenticate(&set.access_token, 1010),
            Err(AuthError::Revoked { .. })
        ));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let (mut r, _) = reg_with("a");
        assert!(r
            .create(
                NewAccount {
                    account_id: Some("a".into()),
                    ..Default::default()
                },
                0
            )
            .is_err());
        let acc = r.create(NewAccount::default(), 0).unwrap();
        assert_eq!(acc.id.len(), 36);
    }
}
