//! Row mapping, all of it: the SELECT column lists, typed column access, and one `*_from_row`
//! per record. Rules: a leaf module, it depends on no other store module except the error
//! type; functions here only read a row already fetched (no queries, no I/O); a value the
//! schema does not allow is [`StoreError::Corrupt`], naming the column or value.

use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use crate::error::StoreError;
use codexmesh_model::records::{
    Account, AccountState, AccountWithToken, AllowedCidrs, AuditEntry, Counters, CredentialKind,
    CreditsEvidence, KeyStatus, Lease, LoggedOutcome, Membership, OutcomeGroup, OutcomeRecord,
    Pool, PoolKey, Provider, QuotaRecord, QuotaWindowRecord, Routing, RoutingMode, SnapshotAccount,
    Strategy, WindowEvidence,
};

/// `pools` and `pool_keys` name their routing columns alike, so `routing_from_row` reads both.
pub(crate) const POOL_SELECT: &str = "SELECT id, name, created_at, strategy, max_attempts, \
     explain_routes, primary_account_id, primary_threshold_percent, secondary_threshold_percent, \
     circuit_failures, circuit_open_ms, cooldown_max_ms, websockets, archived_at, allowed_cidrs \
     FROM pools";

/// An account's own columns; its pools come from `pool_memberships` (`tx::attach_memberships_tx`).
/// (`accounts.pool_id`, `priority` and `weight` are pre-0005 leftovers: not read.)
pub(crate) const ACCOUNT_SELECT: &str = "SELECT a.id, a.label, \
     a.provider, a.credential_kind, a.project_id, \
     a.chatgpt_account_id, a.chatgpt_user_id, a.email, a.plan, a.state, a.state_reason, \
     a.cooldown_until, a.access_token_expires_at, a.tokens_updated_at, \
     a.created_at, a.updated_at, a.sealed_access_token, a.token_revision, a.health, \
     a.last_refresh_at, a.refresh_failures, a.next_refresh_at, a.last_refresh_error, \
     a.source_path, a.source_hash, a.egress_proxy \
     FROM accounts a";

pub(crate) const MEMBERSHIP_SELECT: &str = "SELECT m.account_id, m.pool_id, p.name AS pool_name, \
     m.priority, m.weight, m.created_at FROM pool_memberships m JOIN pools p ON p.id = m.pool_id";

pub(crate) const KEY_SELECT: &str = "SELECT k.id, k.pool_id, p.name AS pool_name, k.label, \
     k.key_hash, k.status, k.operator, k.created_at, k.revoked_at, k.routing_mode, k.strategy, \
     k.max_attempts, k.explain_routes, k.primary_account_id, k.primary_threshold_percent, \
     k.secondary_threshold_percent, k.circuit_failures, k.circuit_open_ms, k.cooldown_max_ms, \
     k.websockets, k.policy FROM pool_keys k JOIN pools p ON p.id = k.pool_id";

/// What [`crate::Store::snapshot_data`] reads of each account, once per membership (with that
/// pool's priority and weight), in the order accounts are sent.
pub(crate) const SNAPSHOT_ACCOUNT_SELECT: &str =
    "SELECT a.id, m.pool_id, a.label, a.provider, a.credential_kind, a.project_id, \
     a.chatgpt_account_id, \
     a.plan, a.state, a.state_reason, a.cooldown_until, m.priority, m.weight, \
     a.access_token_expires_at, a.token_revision, a.health, a.egress_proxy, \
     a.sealed_access_token \
     FROM pool_memberships m JOIN accounts a ON a.id = m.account_id \
     ORDER BY m.priority, a.label, a.id, m.pool_id";

pub(crate) const QUOTA_COLS: &str = "account_id, primary_used_percent, primary_window_minutes, \
     primary_resets_at, primary_observed_at, primary_source, secondary_used_percent, \
     secondary_window_minutes, secondary_resets_at, secondary_observed_at, secondary_source, \
     credits_has_credits, credits_unlimited, credits_balance, credits_observed_at, plan, \
     plan_observed_at, version";

/// An `outcomes` row as the request log reads it.
pub(crate) const OUTCOME_COLS: &str = "id, received_at, node_id, pool_id, key_id, account_id, \
     attempt, status, error_code, started_at, latency_ms, request_path, snapshot_version, plan, \
     resets_at, primary_used_percent, primary_window_minutes, primary_resets_at, \
     secondary_used_percent, secondary_window_minutes, secondary_resets_at, quota_observed_at, \
     credits_has_credits, credits_unlimited, credits_balance, error_source, fallback, \
     retry_after, token_expires_at, strategy, route_reason, input_tokens, output_tokens, \
     policy_refusal";

pub(crate) const AUDIT_COLS: &str =
    "id, at, actor, action, target, outcome, client, detail, revision";

pub(crate) const LEASE_SELECT: &str = "SELECT name, holder, expires_at FROM leases";

pub(crate) const COUNTERS_SELECT: &str =
    "SELECT account_id, requests, successes, fallbacks_served FROM account_stats";

/// What an import compares to find the stored account of a login ([`login_from_row`]).
pub(crate) const LOGIN_SELECT: &str =
    "SELECT id, chatgpt_user_id, access_token_expires_at, state FROM accounts";

/// Typed column access with the column named in errors.
pub(crate) fn col<T>(row: &AnyRow, name: &str) -> Result<T, StoreError>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get::<T, _>(name).map_err(StoreError::from)
}

pub(crate) fn col_u32(row: &AnyRow, name: &str) -> Result<u32, StoreError> {
    let v: i64 = col(row, name)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{name} = {v} is out of range")))
}

pub(crate) fn col_bool(row: &AnyRow, name: &str) -> Result<bool, StoreError> {
    Ok(col::<i64>(row, name)? != 0)
}

/// A nullable DOUBLE PRECISION parameter. sqlx 0.8's Any driver sends a NULL `f64` to Postgres
/// as `float4`, so a statement first prepared with a NULL there is cached with a `float4`
/// parameter and a later non-NULL `f64` fails ("incorrect binary data format"). A NULL `f32`
/// goes out as `float8`: use that for NULLs. (SQLite does not care.)
pub(crate) struct NullableF64(pub Option<f64>);

impl<'q> sqlx::Encode<'q, Any> for NullableF64 {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self.0 {
            Some(v) => <f64 as sqlx::Encode<'q, Any>>::encode_by_ref(&v, buf),
            None => <Option<f32> as sqlx::Encode<'q, Any>>::encode_by_ref(&None, buf),
        }
    }
}

impl sqlx::Type<Any> for NullableF64 {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <f64 as sqlx::Type<Any>>::type_info()
    }
}

pub(crate) fn opt_u32(row: &AnyRow, name: &str) -> Result<Option<u32>, StoreError> {
    col::<Option<i64>>(row, name)?
        .map(|v| {
            u32::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("{name} = {v} is out of range")))
        })
        .transpose()
}

/// The routing columns of a `pools` or `pool_keys` row. NULL strategy / max_attempts /
/// explain_routes (possible only in key rows) read as the defaults.
pub(crate) fn routing_from_row(row: &AnyRow) -> Result<Routing, StoreError> {
    let defaults = Routing::default();
    let strategy = match col::<Option<String>>(row, "strategy")? {
        Some(s) => Strategy::parse(&s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown strategy {s:?}")))?,
        None => defaults.strategy,
    };
    Ok(Routing {
        strategy,
        max_attempts: opt_u32(row, "max_attempts")?.unwrap_or(defaults.max_attempts),
        explain_routes: col::<Option<i64>>(row, "explain_routes")?.is_some_and(|v| v != 0),
        primary_account_id: col(row, "primary_account_id")?,
        primary_threshold_percent: col(row, "primary_threshold_percent")?,
        secondary_threshold_percent: col(row, "secondary_threshold_percent")?,
        circuit_failures: opt_u32(row, "circuit_failures")?,
        circuit_open_ms: opt_u32(row, "circuit_open_ms")?,
        cooldown_max_ms: opt_u32(row, "cooldown_max_ms")?,
        websockets: col::<Option<i64>>(row, "websockets")?.is_none_or(|v| v != 0),
    })
}

pub(crate) fn pool_from_row(row: &AnyRow) -> Result<Pool, StoreError> {
    Ok(Pool {
        id: col(row, "id")?,
        name: col(row, "name")?,
        routing: routing_from_row(row)?,
        created_at_ms: col(row, "created_at")?,
        archived_at_ms: col(row, "archived_at")?,
        allowed_cidrs: {
            let text: String = col(row, "allowed_cidrs")?;
            AllowedCidrs::from_stored(&text)
                .map_err(|e| StoreError::Corrupt(format!("pools.allowed_cidrs: {e}")))?
        },
    })
}

fn provider_from_row(row: &AnyRow) -> Result<Provider, StoreError> {
    let text: String = col(row, "provider")?;
    Provider::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown account provider {text:?}")))
}

fn credential_kind_from_row(row: &AnyRow) -> Result<CredentialKind, StoreError> {
    let text: String = col(row, "credential_kind")?;
    CredentialKind::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown credential kind {text:?}")))
}

pub(crate) fn account_from_row(row: &AnyRow) -> Result<Account, StoreError> {
    let state: String = col(row, "state")?;
    Ok(Account {
        id: col(row, "id")?,
        // Filled in from its memberships.
        pool_id: String::new(),
        pool: String::new(),
        label: col(row, "label")?,
        provider: provider_from_row(row)?,
        credential_kind: credential_kind_from_row(row)?,
        project_id: col(row, "project_id")?,
        chatgpt_account_id: col(row, "chatgpt_account_id")?,
        chatgpt_user_id: col(row, "chatgpt_user_id")?,
        email: col(row, "email")?,
        plan: col(row, "plan")?,
        state: AccountState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown account state {state:?}")))?,
        state_reason: col(row, "state_reason")?,
        cooldown_until_ms: col(row, "cooldown_until")?,
        priority: 0,
        weight: 1,
        access_token_expires_at_ms: col(row, "access_token_expires_at")?,
        tokens_updated_at_ms: col(row, "tokens_updated_at")?,
        created_at_ms: col(row, "created_at")?,
        updated_at_ms: col(row, "updated_at")?,
        token_revision: col(row, "token_revision")?,
        health: col_u32(row, "health")?.min(100),
        last_refresh_at_ms: col(row, "last_refresh_at")?,
        refresh_failures: col_u32(row, "refresh_failures")?,
        next_refresh_at_ms: col(row, "next_refresh_at")?,
        last_refresh_error: col(row, "last_refresh_error")?,
        source_path: col(row, "source_path")?,
        source_hash: col(row, "source_hash")?,
        egress_proxy: col(row, "egress_proxy")?,
        pools: Vec::new(),
    })
}

pub(crate) fn membership_from_row(row: &AnyRow) -> Result<(String, Membership), StoreError> {
    Ok((
        col(row, "account_id")?,
        Membership {
            pool_id: col(row, "pool_id")?,
            pool: col(row, "pool_name")?,
            priority: col_u32(row, "priority")?,
            weight: col_u32(row, "weight")?,
            created_at_ms: col(row, "created_at")?,
        },
    ))
}

pub(crate) fn key_from_row(row: &AnyRow) -> Result<PoolKey, StoreError> {
    let status: String = col(row, "status")?;
    let mode: String = col(row, "routing_mode")?;
    let routing_mode = RoutingMode::parse(&mode)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown routing mode {mode:?}")))?;
    Ok(PoolKey {
        id: col(row, "id")?,
        pool_id: col(row, "pool_id")?,
        pool: col(row, "pool_name")?,
        label: col(row, "label")?,
        key_hash_hex: col(row, "key_hash")?,
        status: KeyStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key status {status:?}")))?,
        operator: col_bool(row, "operator")?,
        created_at_ms: col(row, "created_at")?,
        revoked_at_ms: col(row, "revoked_at")?,
        routing_mode,
        routing_override: match routing_mode {
            RoutingMode::Custom => Some(routing_from_row(row)?),
            RoutingMode::Inherit => None,
        },
        policy: policy_from_column(col(row, "policy")?)?,
        usage: None,
    })
}

/// A `pool_keys.policy` value: NULL (or an empty policy) is none.
pub(crate) fn policy_from_column(
    json: Option<String>,
) -> Result<Option<codexmesh_model::policy::KeyPolicy>, StoreError> {
    let Some(json) = json else { return Ok(None) };
    let policy: codexmesh_model::policy::KeyPolicy = serde_json::from_str(&json)
        .map_err(|e| StoreError::Corrupt(format!("stored key policy {json:?}: {e}")))?;
    Ok((!policy.is_empty()).then_some(policy))
}

/// What `pool_keys.policy` stores for `policy`: NULL for none.
pub(crate) fn policy_column(
    policy: Option<&codexmesh_model::policy::KeyPolicy>,
) -> Result<Option<String>, StoreError> {
    policy
        .filter(|p| !p.is_empty())
        .map(|p| {
            serde_json::to_string(p)
                .map_err(|e| StoreError::Corrupt(format!("cannot encode a key policy: {e}")))
        })
        .transpose()
}

pub(crate) fn outcome_from_row(r: &AnyRow) -> Result<OutcomeRecord, StoreError> {
    let window = |prefix: &str| -> Result<Option<QuotaWindowRecord>, StoreError> {
        let used: Option<f64> = col(r, &format!("{prefix}_used_percent"))?;
        Ok(match used {
            Some(used_percent) => Some(QuotaWindowRecord {
                used_percent,
                window_minutes: col::<Option<i64>>(r, &format!("{prefix}_window_minutes"))?
                    .unwrap_or(0),
                resets_at_unix: col::<Option<i64>>(r, &format!("{prefix}_resets_at"))?.unwrap_or(0),
            }),
            None => None,
        })
    };
    Ok(OutcomeRecord {
        input_tokens: col::<Option<i64>>(r, "input_tokens")?.unwrap_or(0),
        output_tokens: col::<Option<i64>>(r, "output_tokens")?.unwrap_or(0),
        policy_refusal: col(r, "policy_refusal")?,
        pool_id: col(r, "pool_id")?,
        key_id: col(r, "key_id")?,
        account_id: col(r, "account_id")?,
        attempt: col(r, "attempt")?,
        status: col(r, "status")?,
        error_code: col(r, "error_code")?,
        started_at_ms: col(r, "started_at")?,
        latency_ms: col(r, "latency_ms")?,
        request_path: col(r, "request_path")?,
        snapshot_version: col(r, "snapshot_version")?,
        plan: col(r, "plan")?,
        resets_at_unix: col(r, "resets_at")?,
        primary: window("primary")?,
        secondary: window("secondary")?,
        quota_observed_at_ms: col(r, "quota_observed_at")?,
        credits_has_credits: col_bool(r, "credits_has_credits")?,
        credits_unlimited: col_bool(r, "credits_unlimited")?,
        credits_balance: col(r, "credits_balance")?,
        error_source: col(r, "error_source")?,
        fallback: col_bool(r, "fallback")?,
        retry_after_unix: col(r, "retry_after")?,
        token_expires_at_unix: col(r, "token_expires_at")?,
        strategy: col(r, "strategy")?,
        route_reason: col(r, "route_reason")?,
    })
}

fn snapshot_account_from_row(row: &AnyRow) -> Result<SnapshotAccount, StoreError> {
    let state: String = col(row, "state")?;
    Ok(SnapshotAccount {
        id: col(row, "id")?,
        pool_id: col(row, "pool_id")?,
        label: col(row, "label")?,
        provider: provider_from_row(row)?,
        credential_kind: credential_kind_from_row(row)?,
        project_id: col(row, "project_id")?,
        chatgpt_account_id: col(row, "chatgpt_account_id")?,
        plan: col(row, "plan")?,
        state: AccountState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown account state {state:?}")))?,
        state_reason: col(row, "state_reason")?,
        cooldown_until_ms: col(row, "cooldown_until")?,
        priority: col_u32(row, "priority")?,
        weight: col_u32(row, "weight")?,
        access_token_expires_at_ms: col(row, "access_token_expires_at")?,
        token_revision: col(row, "token_revision")?,
        health: col_u32(row, "health")?.min(100),
        egress_proxy: col(row, "egress_proxy")?,
    })
}

fn window_from_row(row: &AnyRow, prefix: &str) -> Result<Option<WindowEvidence>, StoreError> {
    let used: Option<f64> = col(row, &format!("{prefix}_used_percent"))?;
    let Some(used_percent) = used else {
        return Ok(None);
    };
    Ok(Some(WindowEvidence {
        used_percent,
        window_minutes: col::<Option<i64>>(row, &format!("{prefix}_window_minutes"))?.unwrap_or(0),
        resets_at_unix: col::<Option<i64>>(row, &format!("{prefix}_resets_at"))?.unwrap_or(0),
        observed_at_ms: col::<Option<i64>>(row, &format!("{prefix}_observed_at"))?.unwrap_or(0),
        source: col::<Option<String>>(row, &format!("{prefix}_source"))?.unwrap_or_default(),
    }))
}

pub(crate) fn quota_from_row(row: &AnyRow) -> Result<(String, QuotaRecord), StoreError> {
    let credits_seen: Option<i64> = col(row, "credits_observed_at")?;
    let credits = match credits_seen {
        Some(observed_at_ms) => Some(CreditsEvidence {
            has_credits: col::<Option<i64>>(row, "credits_has_credits")?.unwrap_or(0) != 0,
            unlimited: col::<Option<i64>>(row, "credits_unlimited")?.unwrap_or(0) != 0,
            balance: col(row, "credits_balance")?,
            observed_at_ms,
        }),
        None => None,
    };
    Ok((
        col(row, "account_id")?,
        QuotaRecord {
            primary: window_from_row(row, "primary")?,
            secondary: window_from_row(row, "secondary")?,
            credits,
            plan: col(row, "plan")?,
            plan_observed_at_ms: col::<Option<i64>>(row, "plan_observed_at")?.unwrap_or(0),
            version: col(row, "version")?,
        },
    ))
}
pub(crate) fn logged_outcome_from_row(r: &AnyRow) -> Result<LoggedOutcome, StoreError> {
    Ok(LoggedOutcome {
        id: col(r, "id")?,
        received_at_ms: col(r, "received_at")?,
        node_id: col(r, "node_id")?,
        outcome: outcome_from_row(r)?,
    })
}

pub(crate) fn audit_from_row(r: &AnyRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: col(r, "id")?,
        at_ms: col(r, "at")?,
        actor: col(r, "actor")?,
        action: col(r, "action")?,
        target: col(r, "target")?,
        outcome: col(r, "outcome")?,
        client: col(r, "client")?,
        // Filled from audit_pools by the reader.
        pools: Vec::new(),
        detail: col(r, "detail")?,
        revision: col(r, "revision")?,
    })
}

pub(crate) fn lease_from_row(r: &AnyRow) -> Result<Lease, StoreError> {
    Ok(Lease {
        name: col(r, "name")?,
        holder: col(r, "holder")?,
        expires_at_ms: col(r, "expires_at")?,
    })
}

/// A row of [`crate::Store::outcome_groups`]' GROUP BY.
pub(crate) fn outcome_group_from_row(r: &AnyRow) -> Result<OutcomeGroup, StoreError> {
    Ok(OutcomeGroup {
        account_id: col(r, "account_id")?,
        status: col(r, "status")?,
        error_source: col(r, "error_source")?,
        fallback: col_bool(r, "fallback")?,
        recent: col_bool(r, "recent")?,
        count: col(r, "n")?,
        latency_sum_ms: col::<Option<i64>>(r, "latency")?.unwrap_or(0),
    })
}

pub(crate) fn counters_from_row(r: &AnyRow) -> Result<(String, Counters), StoreError> {
    Ok((
        col(r, "account_id")?,
        Counters {
            requests: col(r, "requests")?,
            successes: col(r, "successes")?,
            fallbacks_served: col(r, "fallbacks_served")?,
        },
    ))
}

/// A row of [`LOGIN_SELECT`]: an account as a candidate for an imported login.
pub(crate) struct LoginRow {
    pub id: String,
    pub user: Option<String>,
    pub expiry: Option<i64>,
    pub state: String,
}

pub(crate) fn login_from_row(r: &AnyRow) -> Result<LoginRow, StoreError> {
    Ok(LoginRow {
        id: col(r, "id")?,
        user: col(r, "chatgpt_user_id")?,
        expiry: col(r, "access_token_expires_at")?,
        state: col(r, "state")?,
    })
}

/// The sealed token column `sealed_{field}` (`access_token`, `refresh_token`, `id_token`).
pub(crate) fn sealed_from_row(r: &AnyRow, field: &str) -> Result<Vec<u8>, StoreError> {
    col(r, &format!("sealed_{field}"))
}

/// A row of [`SNAPSHOT_ACCOUNT_SELECT`] with its sealed access token (quota filled in later).
pub(crate) fn snapshot_account_with_token_from_row(
    r: &AnyRow,
) -> Result<AccountWithToken, StoreError> {
    Ok(AccountWithToken {
        account: snapshot_account_from_row(r)?,
        sealed_access_token: sealed_from_row(r, "access_token")?,
        quota: None,
    })
}

pub(crate) const OPERATOR_COLS: &str = "id, name, role, disabled, totp_enabled, created_at, \
     updated_at";

pub(crate) const API_TOKEN_COLS: &str =
    "id, label, role, created_by, created_at, last_used_at, revoked_at";

fn role_col(row: &AnyRow) -> Result<codexmesh_model::operators::Role, StoreError> {
    let role: String = col(row, "role")?;
    codexmesh_model::operators::Role::parse(&role)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown operator role {role:?}")))
}

/// An operator without its pools (the caller fills them in).
pub(crate) fn operator_from_row(
    row: &AnyRow,
) -> Result<codexmesh_model::operators::Operator, StoreError> {
    Ok(codexmesh_model::operators::Operator {
        id: col(row, "id")?,
        name: col(row, "name")?,
        role: role_col(row)?,
        pools: Vec::new(),
        disabled: col_bool(row, "disabled")?,
        totp_enabled: col_bool(row, "totp_enabled")?,
        created_at_ms: col(row, "created_at")?,
        updated_at_ms: col(row, "updated_at")?,
    })
}

/// An API token without its pools (the caller fills them in).
pub(crate) fn api_token_from_row(
    row: &AnyRow,
) -> Result<codexmesh_model::operators::ApiToken, StoreError> {
    Ok(codexmesh_model::operators::ApiToken {
        id: col(row, "id")?,
        label: col(row, "label")?,
        role: role_col(row)?,
        pools: Vec::new(),
        created_by: col(row, "created_by")?,
        created_at_ms: col(row, "created_at")?,
        last_used_at_ms: col(row, "last_used_at")?,
        revoked_at_ms: col(row, "revoked_at")?,
    })
}
