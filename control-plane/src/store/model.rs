//! Rows as the rest of the crate sees them. None of these types carries a plaintext secret, and
//! their `Serialize` output is what `--json` and the admin API print.

use serde::Serialize;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// How a pool ranks its accounts (the filter implements them; stored here).
    Strategy {
        RoundRobin = "round_robin",
        QuotaFirst = "quota_first",
        PrimaryFirst = "primary_first",
        PriorityOrder = "priority_order",
    }
);

string_enum!(
    AccountState {
        Active = "active",
        Paused = "paused",
        CoolingDown = "cooling_down",
        NeedsReauth = "needs_reauth",
    }
);

string_enum!(
    KeyStatus {
        Active = "active",
        Revoked = "revoked",
    }
);

#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub strategy: Strategy,
    pub max_attempts: u32,
    pub explain_routes: bool,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub id: String,
    pub pool_id: String,
    /// The pool's name.
    pub pool: String,
    pub label: String,
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
}

#[derive(Debug, Clone, Serialize)]
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
}

/// An account plus its sealed access token, for the snapshot builder only.
#[derive(Clone)]
pub struct AccountWithToken {
    pub account: Account,
    pub sealed_access_token: Vec<u8>,
}

/// Everything a snapshot is built from, read in one transaction.
#[derive(Clone)]
pub struct SnapshotData {
    pub revision: i64,
    pub pools: Vec<Pool>,
    pub keys: Vec<PoolKey>,
    pub accounts: Vec<AccountWithToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    Created,
    Updated,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportResult {
    pub action: ImportAction,
    pub account: Account,
    pub revision: i64,
}

/// What a state change did: `changed == false` means it was already so (nothing written).
#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<String>,
    pub revision: i64,
}
