//! Rows as the rest of the crate sees them. None of these types carries a plaintext secret, and
//! their `Serialize` output is what `--json` and the admin API print.

use serde::Serialize;

pub use crate::network::AllowedCidrs;
pub use crate::routing::{Routing, RoutingMode, Strategy};

string_enum!(
    AccountState {
        Active = "active",
        Paused = "paused",
        CoolingDown = "cooling_down",
        NeedsReauth = "needs_reauth",
    }
);

string_enum!(
    /// Whose API an account speaks. A request goes only to accounts of the provider its route
    /// speaks; a pool may hold accounts of one provider or several.
    Provider {
        Codex = "codex",
        Claude = "claude",
        Gemini = "gemini",
    }
);

string_enum!(
    /// How an account's credential is presented upstream: an OAuth access token that the
    /// refresher keeps alive (Codex, Claude subscriptions, Google), or a static API key (Claude
    /// console keys; never refreshed).
    CredentialKind {
        Oauth = "oauth",
        ApiKey = "api_key",
    }
);

string_enum!(
    KeyStatus {
        Active = "active",
        Revoked = "revoked",
    }
);

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub routing: Routing,
    pub created_at_ms: i64,
    /// When the pool was archived (it then leaves the snapshot: its keys stop working).
    pub archived_at_ms: Option<i64>,
    /// The client addresses its keys work from; empty: any.
    pub allowed_cidrs: AllowedCidrs,
}

/// `{"id","name","strategy","max_attempts","explain_routes","created_at_ms","routing"}`: the
/// first fields as before this pool had more settings (scripts read them), `routing` the
/// effective settings with the defaults filled in.
impl Serialize for Pool {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            id: &'a str,
            name: &'a str,
            strategy: Strategy,
            max_attempts: u32,
            explain_routes: bool,
            created_at_ms: i64,
            routing: &'a Routing,
            #[serde(skip_serializing_if = "Option::is_none")]
            archived_at_ms: Option<i64>,
            allowed_cidrs: &'a AllowedCidrs,
        }
        Json {
            id: &self.id,
            name: &self.name,
            strategy: self.routing.strategy,
            max_attempts: self.routing.max_attempts,
            explain_routes: self.routing.explain_routes,
            created_at_ms: self.created_at_ms,
            routing: &self.routing,
            archived_at_ms: self.archived_at_ms,
            allowed_cidrs: &self.allowed_cidrs,
        }
        .serialize(serializer)
    }
}

// The JSON shape of [`Pool`] for the OpenAPI document (its `Serialize` is hand-written).
/// A pool: its routing (the first settings also at the top level, as scripts read them) and
/// when it was archived.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PoolJson {
    id: String,
    name: String,
    strategy: Strategy,
    max_attempts: u32,
    explain_routes: bool,
    created_at_ms: i64,
    routing: crate::routing::RoutingView,
    /// Present when the pool is archived.
    archived_at_ms: Option<i64>,
    /// The client addresses (CIDRs) its keys work from; empty: any address.
    allowed_cidrs: Vec<String>,
}

impl utoipa::PartialSchema for Pool {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <PoolJson as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Pool {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Pool")
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <PoolJson as utoipa::ToSchema>::schemas(schemas);
    }
}

/// An account's place in one pool: the pool's priority and weight for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Membership {
    pub pool_id: String,
    /// The pool's name.
    pub pool: String,
    pub priority: u32,
    pub weight: u32,
    pub created_at_ms: i64,
}

/// One login (one credential lineage, one refresher), a member of one or more pools.
/// `pool_id`, `pool`, `priority` and `weight` are one membership's: the pool a listing was
/// asked for, else the first of `pools` by name; `pools` has them all.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Account {
    pub id: String,
    pub pool_id: String,
    /// The pool's name.
    pub pool: String,
    pub label: String,
    /// Whose API it speaks (`codex` for every account made before providers existed).
    pub provider: Provider,
    /// OAuth token or API key.
    pub credential_kind: CredentialKind,
    /// Gemini: the Google Cloud project Code Assist bills; written into each generate request.
    pub project_id: Option<String>,
    /// The provider's id of the login: the ChatGPT account id (Codex), the Claude account uuid or
    /// a fingerprint of the credential (Claude), the Google subject (Gemini).
    pub chatgpt_account_id: String,
    pub chatgpt_user_id: Option<String>,
    pub email: Option<String>,
    pub plan: Option<String>,
    pub state: AccountState,
    pub state_reason: Option<String>,
    pub cooldown_until_ms: Option<i64>,
    pub priority: u32,
    pub weight: u32,
    pub access_token_expires_at_ms: Option<i64>,
    pub tokens_updated_at_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Store revision at which the current access token was written.
    pub token_revision: i64,
    /// The published health score (0..100) the snapshot carries.
    pub health: u32,
    /// Last successful refresh.
    pub last_refresh_at_ms: Option<i64>,
    /// Consecutive transient refresh failures (0 when the last attempt worked).
    pub refresh_failures: u32,
    /// When the next refresh attempt is due after a failure (None: by token expiry).
    pub next_refresh_at_ms: Option<i64>,
    /// Why the last refresh failed (an error code or a short description; never a token).
    pub last_refresh_error: Option<String>,
    /// The watched-folder file this account came from, if any.
    pub source_path: Option<String>,
    /// SHA-256 (hex) of that file's content when it was last imported.
    #[serde(skip)]
    pub source_hash: Option<String>,
    /// The HTTP proxy (`http://host:port`) the control plane's own calls for this account go
    /// through (refresh, quota polls, warm-up); direct when `None` ([`crate::egress`]).
    pub egress_proxy: Option<String>,
    /// Every pool the account is a member of, by pool name.
    pub pools: Vec<Membership>,
}

impl Account {
    /// The membership in pool `pool_id`, if the account is a member there.
    pub fn membership(&self, pool_id: &str) -> Option<&Membership> {
        self.pools.iter().find(|m| m.pool_id == pool_id)
    }

    /// Makes `m` the membership in view (`pool_id`, `pool`, `priority`, `weight`).
    pub fn view_membership(&mut self, m: &Membership) {
        self.pool_id.clone_from(&m.pool_id);
        self.pool.clone_from(&m.pool);
        self.priority = m.priority;
        self.weight = m.weight;
    }

    /// The names of its pools, comma-separated.
    pub fn pool_names(&self) -> String {
        self.pools
            .iter()
            .map(|m| m.pool.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `needs_reauth (refresh_token_reused)`, `active`, ...: the state with its reason where
    /// the reason matters to an operator.
    pub fn state_display(&self) -> String {
        match (&self.state, &self.state_reason) {
            (AccountState::NeedsReauth | AccountState::CoolingDown, Some(r)) => {
                format!("{} ({r})", self.state)
            }
            _ => self.state.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PoolKey {
    pub id: String,
    pub pool_id: String,
    /// The pool's name.
    pub pool: String,
    pub label: String,
    /// Lowercase hex SHA-256 of the raw key. Not secret, but of no use to people: not printed.
    #[serde(skip)]
    pub key_hash_hex: String,
    pub status: KeyStatus,
    pub operator: bool,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub routing_mode: RoutingMode,
    /// The key's own settings when `routing_mode` is custom (then always Some), else None.
    #[schema(value_type = Option<crate::routing::RoutingView>)]
    pub routing_override: Option<Routing>,
    /// The key's limits (issue 15); None: no policy.
    pub policy: Option<crate::policy::KeyPolicy>,
    /// What has been counted of the key's use (filled by listings; None elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::KeyUsageView>,
}

/// An account plus its sealed access token, for the snapshot builder only.
#[derive(Clone)]
pub struct AccountWithToken {
    pub account: SnapshotAccount,
    pub sealed_access_token: Vec<u8>,
    pub quota: Option<QuotaRecord>,
}

/// The columns of an account a snapshot carries (a subset of [`Account`]: reading only these
/// halves the snapshot read at 10,000 accounts). Fields mean what they mean in [`Account`].
#[derive(Debug, Clone)]
pub struct SnapshotAccount {
    pub id: String,
    pub pool_id: String,
    pub label: String,
    pub provider: Provider,
    pub credential_kind: CredentialKind,
    pub project_id: Option<String>,
    pub chatgpt_account_id: String,
    pub plan: Option<String>,
    pub state: AccountState,
    pub state_reason: Option<String>,
    pub cooldown_until_ms: Option<i64>,
    pub priority: u32,
    pub weight: u32,
    pub access_token_expires_at_ms: Option<i64>,
    pub token_revision: i64,
    pub health: u32,
    pub egress_proxy: Option<String>,
}

/// An account with its tokens opened, for the refresher and `account export`. `Debug` hides the
/// tokens.
#[derive(Clone)]
pub struct AccountSecrets {
    pub account: Account,
    pub access_token: String,
    pub refresh_token: String,
    pub id_token: String,
}

impl std::fmt::Debug for AccountSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSecrets")
            .field("account", &self.account.id)
            .finish_non_exhaustive()
    }
}

/// What a successful refresh wrote. `Debug` hides the tokens.
#[derive(Clone)]
pub struct RefreshedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub id_token: String,
    pub access_token_expires_at_ms: Option<i64>,
    /// From the new id token's claims, when it carries them.
    pub plan: Option<String>,
    pub email: Option<String>,
}

impl std::fmt::Debug for RefreshedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshedTokens")
            .field(
                "access_token_expires_at_ms",
                &self.access_token_expires_at_ms,
            )
            .finish_non_exhaustive()
    }
}

/// Where an imported account came from, for watched folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSource {
    pub path: String,
    pub hash: String,
}

/// Which quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    Primary,
    Secondary,
}

/// One window's freshest evidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowEvidence {
    pub used_percent: f64,
    pub window_minutes: i64,
    /// Unix seconds; 0 = unknown.
    pub resets_at_unix: i64,
    /// When it was observed (unix ms).
    pub observed_at_ms: i64,
    /// `poll` (GET /wham/usage), `headers` (x-codex-* on an answer), `limit` (a 429
    /// usage_limit_reached), `reset` (the reset time passed).
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CreditsEvidence {
    pub has_credits: bool,
    pub unlimited: bool,
    pub balance: Option<String>,
    pub observed_at_ms: i64,
}

/// The freshest quota evidence of one account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QuotaRecord {
    pub primary: Option<WindowEvidence>,
    pub secondary: Option<WindowEvidence>,
    pub credits: Option<CreditsEvidence>,
    pub plan: Option<String>,
    #[serde(skip)]
    pub plan_observed_at_ms: i64,
    /// Write counter (compare-and-set).
    #[serde(skip)]
    pub version: i64,
}

impl QuotaRecord {
    pub fn window(&self, kind: WindowKind) -> Option<&WindowEvidence> {
        match kind {
            WindowKind::Primary => self.primary.as_ref(),
            WindowKind::Secondary => self.secondary.as_ref(),
        }
    }

    pub fn window_mut(&mut self, kind: WindowKind) -> &mut Option<WindowEvidence> {
        match kind {
            WindowKind::Primary => &mut self.primary,
            WindowKind::Secondary => &mut self.secondary,
        }
    }
}

/// All-time activity counters of one account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counters {
    pub requests: i64,
    pub successes: i64,
    pub fallbacks_served: i64,
}

/// Outcomes of one account in a time window, grouped by what matters to the health score.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeGroup {
    pub account_id: String,
    pub status: i64,
    pub error_source: Option<String>,
    pub fallback: bool,
    /// Whether these outcomes are in the recent part of the window.
    pub recent: bool,
    pub count: i64,
    pub latency_sum_ms: i64,
}

/// A lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub expires_at_ms: i64,
}

/// Everything a snapshot is built from, read in one transaction.
#[derive(Clone)]
pub struct SnapshotData {
    pub revision: i64,
    pub pools: Vec<Pool>,
    pub keys: Vec<PoolKey>,
    pub accounts: Vec<AccountWithToken>,
    /// Issue 15: each key's counted use, by key id (keys with nothing counted are absent).
    pub key_usage: std::collections::HashMap<String, crate::usage::KeyUsageView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    Created,
    Updated,
}

/// What an import did with the tokens of a login the store already had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenUpdate {
    /// A new account: the imported tokens start its lineage.
    New,
    /// The imported tokens replaced the stored ones (newer, or the same generation).
    Replaced,
    /// The stored tokens are newer (the imported access token expires earlier: its refresh
    /// token was most likely rotated since): kept, the imported ones ignored.
    KeptNewer,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportResult {
    pub action: ImportAction,
    pub account: Account,
    pub revision: i64,
    /// The account was not a member of the pool before (always true for a new account).
    pub joined_pool: bool,
    pub tokens: TokenUpdate,
}

/// What a state change did: `changed == false` means it was already so (nothing written).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Changed<T> {
    pub changed: bool,
    #[serde(flatten)]
    pub item: T,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QuotaWindowRecord {
    pub used_percent: f64,
    pub window_minutes: i64,
    pub resets_at_unix: i64,
}

/// One reported upstream attempt: metadata only (never bodies, prompts or tokens).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeRecord {
    pub pool_id: String,
    pub key_id: String,
    pub account_id: String,
    pub attempt: i64,
    pub status: i64,
    pub error_code: Option<String>,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    pub request_path: Option<String>,
    pub snapshot_version: i64,
    pub plan: Option<String>,
    pub resets_at_unix: Option<i64>,
    pub primary: Option<QuotaWindowRecord>,
    pub secondary: Option<QuotaWindowRecord>,
    pub quota_observed_at_ms: Option<i64>,
    pub credits_has_credits: bool,
    pub credits_unlimited: bool,
    pub credits_balance: Option<String>,
    /// "client", "upstream", "transport" or None.
    pub error_source: Option<String>,
    /// The attempt served a request another account had failed first.
    pub fallback: bool,
    pub retry_after_unix: Option<i64>,
    /// The token generation (its expiry, unix seconds) the attempt used.
    pub token_expires_at_unix: Option<i64>,
    /// The strategy that ranked the request (`quota_first`, ...).
    pub strategy: Option<String>,
    /// Why this attempt's account was chosen (`affinity`, `turn_state`, `strategy`, `probe`,
    /// `failover`).
    pub route_reason: Option<String>,
    /// Tokens the answer stated (0: none stated).
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The listener filter refused the request for its key's policy (`rate_limited`, …): no
    /// account was involved (`account_id` is empty).
    pub policy_refusal: Option<String>,
}

/// Filters for the request log; None matches anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestLogQuery {
    pub pool_id: Option<String>,
    pub account_id: Option<String>,
    pub key_id: Option<String>,
    /// Only entries older than this one (paging backwards).
    pub before_id: Option<i64>,
    /// Only attempts that did not succeed (status outside 2xx, or no status: a reset).
    pub failed_only: bool,
    /// Only entries received at or after this time (Unix ms; 0: any).
    pub since_ms: i64,
    pub limit: i64,
    /// Tenant isolation: Some(ids) keeps only entries of these pools (None: all).
    pub visible_pool_ids: Option<Vec<String>>,
}

/// One request-log row as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedOutcome {
    pub id: i64,
    pub received_at_ms: i64,
    pub node_id: String,
    pub outcome: OutcomeRecord,
}

/// One audit row: who (`actor`, and `client` for API requests) did what (`action`) to what
/// (`target`), how it ended (`outcome`), when, and which pools it concerns. `detail` is JSON
/// metadata, never a secret or a prompt.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    /// `cli:alice`, `operator:bob`, `token:ci-deploy`, `refresher`, `watch`, …
    pub actor: String,
    /// `pool.create`, `account.pause`, `key.rotate`, `session.sign_in`, …
    pub action: String,
    pub target: Option<String>,
    /// `ok`, or why it was refused: `not_found`, `invalid`, `conflict`, `forbidden`,
    /// `unauthenticated`, `rate_limited`, `upstream`, `unavailable`, `internal`.
    pub outcome: String,
    /// The client's IP address (admin API requests).
    pub client: Option<String>,
    /// The pools the row concerns (empty: owners only).
    pub pools: Vec<String>,
    pub detail: Option<String>,
    /// The store revision the change made; a change no snapshot carries (operators, tokens)
    /// names the revision it was made at; 0: a refusal, nothing changed.
    pub revision: i64,
}

/// Fixtures for unit tests in this and other crates (feature `fixtures`).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures {
    use super::{Account, AccountState, CredentialKind, Provider};

    pub fn account(id: &str) -> Account {
        Account {
            id: id.to_owned(),
            pool_id: "pool_1".into(),
            pool: "p".into(),
            label: id.to_owned(),
            provider: Provider::Codex,
            credential_kind: CredentialKind::Oauth,
            project_id: None,
            chatgpt_account_id: format!("chatgpt-{id}"),
            chatgpt_user_id: None,
            email: None,
            plan: None,
            state: AccountState::Active,
            state_reason: None,
            cooldown_until_ms: None,
            priority: 0,
            weight: 1,
            access_token_expires_at_ms: None,
            tokens_updated_at_ms: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            token_revision: 1,
            health: 100,
            last_refresh_at_ms: None,
            refresh_failures: 0,
            next_refresh_at_ms: None,
            last_refresh_error: None,
            source_path: None,
            source_hash: None,
            egress_proxy: None,
            pools: Vec::new(),
        }
    }
}
