//! Builds the proto `Snapshot` from the store, encodes each new version once, and publishes it
//! on `watch` channels: the encoded frame for the Subscribe streams (`push.rs` sends the same
//! bytes to every subscriber), the decoded snapshot for in-process readers (the refresh
//! scheduler wakes on it).
//!
//! When it rebuilds:
//! - **Changes made by this process** (token refresh, 401-triggered refresh, quota evidence,
//!   health scores, watched folders) nudge the builder right after their commit
//!   ([`SnapshotHub::nudger`], handed to the lifecycle workers): it reads the revision at once
//!   instead of at the next poll. The admin HTTP API only reads.
//! - **Changes made by other processes** (the CLI writes SQLite directly; another replica on the
//!   same Postgres) are seen by polling `meta.revision` every `change_poll_ms`. That read is one
//!   row by primary key (about 40 µs on SQLite, measured at 10,000 accounts), so the default
//!   25 ms poll costs about 0.16 % of a core and adds a median 12.5 ms to a CLI change (it is a
//!   setting, `config.rs`, 10..=60000).
//! - After noticing a change, a 15 ms debounce lets a burst of writes become one snapshot; after
//!   publishing, the revision is checked again at once (a write that landed during the rebuild
//!   does not wait for the next poll).
//!
//! A rebuild reads only the columns a snapshot carries, opens only the access tokens that changed
//! since the last build ([`TokenCache`]), and runs the CPU-bound part (build and encode) on the
//! blocking pool so it does not stall the streams' runtime threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codexmesh_proto::v1 as pb;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::push::{snapshot_frame, SnapshotFrame};
use codexmesh_model::util::{self, now_ms};
use codexmesh_store::crypto::Keys;
use codexmesh_store::keyfile::KeySource;
use codexmesh_store::{
    AccountState, AccountWithToken, CredentialKind, KeyStatus, PoolKey, Provider, Routing,
    RoutingMode, SnapshotData, Store, StoreError, Strategy,
};

/// Wait after noticing a change before reading, so writes landing together are coalesced.
const DEBOUNCE: Duration = Duration::from_millis(15);

/// What identifies one sealed access token without opening it: the store revision it was
/// written at, and the sealed blob's length, head (format byte and the nonce, fresh and random
/// for every seal) and tail (the AES-GCM tag, which authenticates the ciphertext). A re-sealed or
/// replaced token differs in all of them; comparing them costs nothing next to a decryption.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SealPrint {
    token_revision: i64,
    len: usize,
    head: [u8; 13],
    tail: [u8; 16],
}

impl SealPrint {
    fn of(token_revision: i64, sealed: &[u8]) -> Self {
        let mut head = [0u8; 13];
        let mut tail = [0u8; 16];
        let h = sealed.len().min(head.len());
        head[..h].copy_from_slice(&sealed[..h]);
        let t = sealed.len().min(tail.len());
        tail[..t].copy_from_slice(&sealed[sealed.len() - t..]);
        Self {
            token_revision,
            len: sealed.len(),
            head,
            tail,
        }
    }
}

/// Opened access tokens from the previous build, by account id, so a rebuild decrypts only the
/// tokens that changed (59 ms of every rebuild at 10,000 accounts before). Entries of accounts
/// that left the store are dropped at the next build; tokens that fail to open are not kept.
/// Holds plaintext tokens, like the snapshot itself: no `Debug`, never logged.
#[derive(Default)]
pub struct TokenCache {
    entries: HashMap<String, (SealPrint, String)>,
    /// Tokens decrypted by the last build.
    pub opened: usize,
    /// Tokens taken from the cache by the last build.
    pub reused: usize,
}

impl TokenCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Builds a snapshot from rows read in one transaction. Access tokens are opened here; an
/// account whose token cannot be opened is sent as NEEDS_REAUTH without a token, rather than
/// failing the whole snapshot. Quota windows whose reset time has passed are sent as 0 % used.
pub fn build(
    data: &SnapshotData,
    key: &(impl Keys + ?Sized),
    control_plane_id: &str,
) -> pb::Snapshot {
    build_with(data, key, control_plane_id, &mut TokenCache::default())
}

/// [`build`], reusing the tokens `cache` opened last time (and leaving this build's in it).
pub fn build_with(
    data: &SnapshotData,
    key: &(impl Keys + ?Sized),
    control_plane_id: &str,
    cache: &mut TokenCache,
) -> pb::Snapshot {
    let now_unix = now_ms() / 1000;
    let mut previous = std::mem::take(&mut cache.entries);
    cache.entries.reserve(data.accounts.len());
    cache.opened = 0;
    cache.reused = 0;
    // One pass to group keys and accounts by pool (in their read order), instead of one scan of
    // every account per pool.
    let mut keys_of: HashMap<&str, Vec<&PoolKey>> = HashMap::with_capacity(data.pools.len());
    for k in &data.keys {
        keys_of.entry(k.pool_id.as_str()).or_default().push(k);
    }
    let mut accounts_of: HashMap<&str, Vec<&AccountWithToken>> =
        HashMap::with_capacity(data.pools.len());
    for a in &data.accounts {
        accounts_of
            .entry(a.account.pool_id.as_str())
            .or_default()
            .push(a);
    }
    let pools = data
        .pools
        .iter()
        .map(|pool| {
            let keys = keys_of
                .get(pool.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|k| {
                    let Some(hash) = hex::decode(&k.key_hash_hex).ok().filter(|h| h.len() == 32)
                    else {
                        tracing::error!(key_id = %k.id, "stored key hash is not 32 bytes of hex; key left out");
                        return None;
                    };
                    Some(pb::PoolKey {
                        id: k.id.clone(),
                        key_hash: hash,
                        status: match k.status {
                            KeyStatus::Active => pb::KeyStatus::Active,
                            KeyStatus::Revoked => pb::KeyStatus::Revoked,
                        } as i32,
                        label: k.label.clone(),
                        // Absent = inherit the pool's routing; the filter uses an override
                        // instead of the pool's settings, so custom keys carry a full copy.
                        routing_override: match k.routing_mode {
                            RoutingMode::Custom => k.routing_override.as_ref().map(proto_routing),
                            RoutingMode::Inherit => None,
                        },
                        operator: k.operator,
                        // Absent = no limits (an empty policy is stored as none).
                        policy: k.policy.as_ref().map(|p| p.to_proto()),
                        usage: data
                            .key_usage
                            .get(&k.id)
                            .filter(|u| !u.is_empty())
                            .map(|u| u.to_proto()),
                    })
                })
                .collect();
            let accounts = accounts_of
                .get(pool.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    let acc = &a.account;
                    let print = SealPrint::of(acc.token_revision, &a.sealed_access_token);
                    // An account in several pools: opened (or reused) for the first already.
                    let cached = cache
                        .entries
                        .get(&acc.id)
                        .filter(|(p, _)| *p == print)
                        .map(|(_, token)| token.clone())
                        .or_else(|| {
                            previous
                                .remove(&acc.id)
                                .filter(|(p, _)| *p == print)
                                .map(|(_, token)| token)
                        });
                    let opened = match cached {
                        Some(token) => {
                            cache.reused += 1;
                            Ok(token)
                        }
                        None => {
                            cache.opened += 1;
                            key.open_string(&acc.id, "access_token", &a.sealed_access_token)
                        }
                    };
                    let (token, state, reason) = match opened {
                        Ok(t) => {
                            cache.entries.insert(acc.id.clone(), (print, t.clone()));
                            (t, acc.state, acc.state_reason.clone().unwrap_or_default())
                        }
                        Err(e) => {
                            tracing::error!(account_id = %acc.id, error = %e,
                                "cannot open the sealed access token; sending the account as needs_reauth");
                            (String::new(), AccountState::NeedsReauth, "sealed_token_unreadable".to_owned())
                        }
                    };
                    pb::Account {
                        id: acc.id.clone(),
                        label: acc.label.clone(),
                        chatgpt_account_id: acc.chatgpt_account_id.clone(),
                        access_token: token,
                        state: proto_state(state) as i32,
                        cooldown_until_unix: match state {
                            AccountState::CoolingDown => acc.cooldown_until_ms.unwrap_or(0) / 1000,
                            _ => 0,
                        },
                        priority: acc.priority,
                        // A share of 0 means nothing (the filter clamps to 1 as well): send
                        // what routing will actually use.
                        weight: acc.weight.max(1),
                        quota: a.quota.as_ref().map(|q| crate::quota::summary(q, now_unix)),
                        health: acc.health.min(100),
                        plan: acc.plan.clone().unwrap_or_default(),
                        access_token_expires_at_unix: acc
                            .access_token_expires_at_ms
                            .map_or(0, |ms| ms.div_euclid(1000)),
                        state_reason: reason,
                        token_revision: u64::try_from(acc.token_revision).unwrap_or(0),
                        provider: proto_provider(acc.provider) as i32,
                        credential_kind: proto_credential_kind(acc.credential_kind) as i32,
                        project_id: acc.project_id.clone().unwrap_or_default(),
                        egress_proxy: acc.egress_proxy.clone().unwrap_or_default(),
                    }
                })
                .collect();
            pb::Pool {
                id: pool.id.clone(),
                name: pool.name.clone(),
                routing: Some(proto_routing(&pool.routing)),
                keys,
                accounts,
                allowed_cidrs: pool.allowed_cidrs.to_strings(),
            }
        })
        .collect();
    pb::Snapshot {
        version: u64::try_from(data.revision).unwrap_or(0),
        generated_at_unix_ms: now_ms(),
        pools,
        control_plane_id: control_plane_id.to_owned(),
        trusted_proxies: Vec::new(),
    }
}

fn proto_state(s: AccountState) -> pb::AccountState {
    match s {
        AccountState::Active => pb::AccountState::Active,
        AccountState::Paused => pb::AccountState::Paused,
        AccountState::CoolingDown => pb::AccountState::CoolingDown,
        AccountState::NeedsReauth => pb::AccountState::NeedsReauth,
    }
}

fn proto_provider(p: Provider) -> pb::Provider {
    match p {
        Provider::Codex => pb::Provider::Codex,
        Provider::Claude => pb::Provider::Claude,
        Provider::Gemini => pb::Provider::Gemini,
    }
}

fn proto_credential_kind(k: CredentialKind) -> pb::CredentialKind {
    match k {
        CredentialKind::Oauth => pb::CredentialKind::Oauth,
        CredentialKind::ApiKey => pb::CredentialKind::ApiKey,
    }
}

/// Stored routing → proto. Settings left at their default are sent as 0 / empty, which the
/// filter reads as its own default (so a filter with newer defaults applies them).
pub fn proto_routing(r: &Routing) -> pb::RoutingSettings {
    pb::RoutingSettings {
        strategy: proto_strategy(r.strategy) as i32,
        max_attempts: r.max_attempts,
        explain_routes: r.explain_routes,
        primary_threshold_percent: r.primary_threshold_percent.unwrap_or(0.0),
        secondary_threshold_percent: r.secondary_threshold_percent.unwrap_or(0.0),
        circuit_failures: r.circuit_failures.unwrap_or(0),
        circuit_open_ms: r.circuit_open_ms.unwrap_or(0),
        cooldown_max_ms: r.cooldown_max_ms.unwrap_or(0),
        primary_account_id: r.primary_account_id.clone().unwrap_or_default(),
        websockets_disabled: !r.websockets,
    }
}

fn proto_strategy(s: Strategy) -> pb::Strategy {
    match s {
        Strategy::RoundRobin => pb::Strategy::RoundRobin,
        Strategy::QuotaFirst => pb::Strategy::QuotaFirst,
        Strategy::PrimaryFirst => pb::Strategy::PrimaryFirst,
        Strategy::PriorityOrder => pb::Strategy::PriorityOrder,
    }
}

/// Identifies this control-plane process in snapshots and logs.
pub fn new_control_plane_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let suffix = util::random_alnum(6).unwrap_or_else(|_| std::process::id().to_string());
    format!("{host}/{suffix}")
}

/// What one rebuild produced, with its timings for the log.
struct Built {
    snapshot: pb::Snapshot,
    frame: Result<SnapshotFrame, String>,
    build_ms: f64,
    encode_ms: f64,
}

/// Builds and encodes, keeping the token cache between builds.
struct Builder {
    key: KeySource,
    cp_id: String,
    /// The setting `gateway_trusted_proxies` (canonical CIDRs), sent in every snapshot.
    trusted_proxies: Vec<String>,
    tokens: TokenCache,
}

impl Builder {
    fn build(&mut self, data: &SnapshotData) -> Built {
        let t = Instant::now();
        let mut snapshot = build_with(data, &self.key, &self.cp_id, &mut self.tokens);
        snapshot.trusted_proxies.clone_from(&self.trusted_proxies);
        let build_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let frame = snapshot_frame(&snapshot).map_err(|e| e.to_string());
        Built {
            snapshot,
            frame,
            build_ms,
            encode_ms: t.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

/// A running snapshot builder.
pub struct SnapshotHub {
    rx: watch::Receiver<Arc<pb::Snapshot>>,
    frames: watch::Receiver<SnapshotFrame>,
    nudge: Arc<Notify>,
    task: JoinHandle<()>,
}

impl SnapshotHub {
    /// Builds the first snapshot (failing fast if the store cannot be read), then keeps
    /// rebuilding on revision changes until `cancel` fires. Every snapshot carries
    /// `trusted_proxies` (the gateway's, canonical CIDRs).
    pub async fn start(
        store: Store,
        key: impl Into<KeySource>,
        control_plane_id: String,
        trusted_proxies: Vec<String>,
        poll: Duration,
        cancel: CancellationToken,
    ) -> Result<Self, StoreError> {
        let mut builder = Builder {
            key: key.into(),
            cp_id: control_plane_id,
            trusted_proxies,
            tokens: TokenCache::default(),
        };
        let built = builder.build(&store.snapshot_data().await?);
        let frame = built.frame.map_err(|message| StoreError::Invalid {
            field: "snapshot",
            message,
        })?;
        tracing::info!(
            version = built.snapshot.version,
            pools = built.snapshot.pools.len(),
            bytes = frame.bytes.len(),
            "initial snapshot built"
        );
        let (tx, rx) = watch::channel(Arc::new(built.snapshot));
        let (frames_tx, frames) = watch::channel(frame);
        let nudge = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            store,
            builder,
            poll,
            cancel,
            Publish {
                snapshots: tx,
                frames: frames_tx,
            },
            nudge.clone(),
        ));
        Ok(Self {
            rx,
            frames,
            nudge,
            task,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<pb::Snapshot>> {
        self.rx.clone()
    }

    /// Each version's encoded Subscribe message, for the streams (`push.rs`).
    pub fn frames(&self) -> watch::Receiver<SnapshotFrame> {
        self.frames.clone()
    }

    pub fn current(&self) -> Arc<pb::Snapshot> {
        self.rx.borrow().clone()
    }

    /// Asks for an immediate revision check (in-process writers call this after a commit).
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub fn nudger(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }
}

struct Publish {
    snapshots: watch::Sender<Arc<pb::Snapshot>>,
    frames: watch::Sender<SnapshotFrame>,
}

async fn run(
    store: Store,
    mut builder: Builder,
    poll: Duration,
    cancel: CancellationToken,
    publish: Publish,
    nudge: Arc<Notify>,
) {
    let mut current = publish.frames.borrow().version;
    let (key, cp_id) = (builder.key.clone(), builder.cp_id.clone());
    let trusted_proxies = builder.trusted_proxies.clone();
    // Log store trouble once per outage, not once per poll.
    let mut failing = false;
    // Check again right away (after a publish: writes may have landed during the rebuild).
    let mut recheck = false;
    loop {
        if recheck {
            recheck = false;
            if cancel.is_cancelled() {
                break;
            }
        } else {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
                _ = nudge.notified() => {}
            }
        }
        let revision = match store.revision().await {
            Ok(r) => u64::try_from(r).unwrap_or(0),
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the store revision; keeping the last snapshot");
                    failing = true;
                }
                continue;
            }
        };
        if revision == current {
            if failing {
                tracing::info!("store readable again");
                failing = false;
            }
            continue;
        }
        if revision < current {
            if !failing {
                tracing::warn!(
                    revision,
                    current,
                    "store revision went backwards (restored backup?); keeping the newer snapshot"
                );
                failing = true;
            }
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        let t = Instant::now();
        let data = match store.snapshot_data().await {
            Ok(data) => data,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot build a snapshot; keeping the last one");
                    failing = true;
                }
                continue;
            }
        };
        let read_ms = t.elapsed().as_secs_f64() * 1000.0;
        failing = false;
        // Build and encode on the blocking pool: at 10,000 accounts that is tens of ms of CPU
        // the streams' runtime threads should not wait behind.
        let job = tokio::task::spawn_blocking(move || {
            let built = builder.build(&data);
            (builder, built)
        });
        let built = match job.await {
            Ok((b, built)) => {
                builder = b;
                built
            }
            Err(e) => {
                // Only a panic gets here; the builder (and its token cache) went with it.
                tracing::error!(error = %e, "snapshot build failed; keeping the last snapshot");
                builder = Builder {
                    key: key.clone(),
                    cp_id: cp_id.clone(),
                    trusted_proxies: trusted_proxies.clone(),
                    tokens: TokenCache::default(),
                };
                continue;
            }
        };
        let frame = match built.frame {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(version = built.snapshot.version, error = %e,
                    "cannot encode the snapshot; keeping the last one");
                continue;
            }
        };
        if frame.version > current {
            current = frame.version;
            tracing::info!(
                version = current,
                pools = built.snapshot.pools.len(),
                bytes = frame.bytes.len(),
                read_ms = format_args!("{read_ms:.1}"),
                build_ms = format_args!("{:.1}", built.build_ms),
                encode_ms = format_args!("{:.1}", built.encode_ms),
                tokens_opened = builder.tokens.opened,
                tokens_reused = builder.tokens.reused,
                "new snapshot"
            );
            publish.frames.send_replace(frame);
            publish.snapshots.send_replace(Arc::new(built.snapshot));
            recheck = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codexmesh_store::crypto::MasterKey;
    use codexmesh_store::{Actor, Pool, SnapshotAccount};
    use prost::Message;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn account(
        key: &MasterKey,
        id: &str,
        token: &str,
        token_revision: i64,
    ) -> Result<AccountWithToken, codexmesh_store::crypto::CryptoError> {
        Ok(AccountWithToken {
            account: SnapshotAccount {
                id: id.into(),
                pool_id: "pool_1".into(),
                label: id.into(),
                provider: Provider::Codex,
                credential_kind: CredentialKind::Oauth,
                project_id: None,
                chatgpt_account_id: format!("chatgpt-{id}"),
                plan: Some("plus".into()),
                state: AccountState::Active,
                state_reason: None,
                cooldown_until_ms: None,
                priority: 0,
                weight: 1,
                access_token_expires_at_ms: None,
                token_revision,
                health: 100,
                egress_proxy: None,
            },
            sealed_access_token: key.seal_str(id, "access_token", token)?,
            quota: None,
        })
    }

    fn data(revision: i64, accounts: Vec<AccountWithToken>) -> SnapshotData {
        SnapshotData {
            revision,
            pools: vec![Pool {
                id: "pool_1".into(),
                name: "main".into(),
                routing: Routing::default(),
                created_at_ms: 0,
                archived_at_ms: None,
                allowed_cidrs: Default::default(),
            }],
            keys: vec![],
            accounts,
            key_usage: Default::default(),
        }
    }

    fn tokens(s: &pb::Snapshot) -> Vec<(String, String, i32)> {
        s.pools
            .iter()
            .flat_map(|p| &p.accounts)
            .map(|a| (a.id.clone(), a.access_token.clone(), a.state))
            .collect()
    }

    #[test]
    fn the_token_cache_opens_each_token_once_and_again_after_it_changed() -> TestResult {
        let key = MasterKey::generate()?;
        let mut cache = TokenCache::default();
        let mut accounts = vec![
            account(&key, "acc_a", "token-a1", 5)?,
            account(&key, "acc_b", "token-b1", 6)?,
        ];
        let first = build_with(&data(10, accounts.clone()), &key, "cp", &mut cache);
        assert_eq!((cache.opened, cache.reused, cache.len()), (2, 0, 2));
        let active = pb::AccountState::Active as i32;
        assert_eq!(
            tokens(&first),
            vec![
                ("acc_a".into(), "token-a1".into(), active),
                ("acc_b".into(), "token-b1".into(), active)
            ]
        );

        // Nothing about the tokens changed: nothing is decrypted, the snapshot is the same.
        let second = build_with(&data(11, accounts.clone()), &key, "cp", &mut cache);
        assert_eq!((cache.opened, cache.reused), (0, 2));
        assert_eq!(tokens(&second), tokens(&first));

        // A refresh of acc_b (new token, new token revision): only that one is opened again.
        accounts[1] = account(&key, "acc_b", "token-b2", 12)?;
        let third = build_with(&data(12, accounts.clone()), &key, "cp", &mut cache);
        assert_eq!((cache.opened, cache.reused), (1, 1));
        assert_eq!(tokens(&third)[1].1, "token-b2");

        // A re-sealed blob under the same token revision (a restored backup, say) is not
        // mistaken for the cached one either.
        accounts[0] = account(&key, "acc_a", "token-a2", 5)?;
        let fourth = build_with(&data(13, accounts.clone()), &key, "cp", &mut cache);
        assert_eq!((cache.opened, cache.reused), (1, 1));
        assert_eq!(tokens(&fourth)[0].1, "token-a2");

        // A removed account leaves the cache; an unreadable token is not cached.
        let mut broken = account(&key, "acc_c", "token-c", 14)?;
        broken.sealed_access_token = key.seal_str("acc_other", "access_token", "token-c")?;
        let fifth = build_with(
            &data(14, vec![accounts[0].clone(), broken]),
            &key,
            "cp",
            &mut cache,
        );
        assert_eq!((cache.opened, cache.reused, cache.len()), (1, 1, 1));
        assert_eq!(
            tokens(&fifth)[1],
            (
                "acc_c".into(),
                String::new(),
                pb::AccountState::NeedsReauth as i32
            )
        );
        build_with(&data(15, vec![accounts[0].clone()]), &key, "cp", &mut cache);
        assert_eq!((cache.opened, cache.reused), (0, 1));
        Ok(())
    }

    #[test]
    fn a_cached_build_equals_a_fresh_one() -> TestResult {
        let key = MasterKey::generate()?;
        let accounts: Vec<_> = (0..20)
            .map(|i| account(&key, &format!("acc_{i:02}"), &format!("token-{i}"), i))
            .collect::<Result<_, _>>()?;
        let mut cache = TokenCache::default();
        build_with(&data(1, accounts.clone()), &key, "cp", &mut cache);
        let mut cached = build_with(&data(2, accounts.clone()), &key, "cp", &mut cache);
        let mut fresh = build(&data(2, accounts), &key, "cp");
        cached.generated_at_unix_ms = 0;
        fresh.generated_at_unix_ms = 0;
        assert_eq!(cached, fresh);
        Ok(())
    }

    async fn wait_for_version(
        frames: &mut watch::Receiver<SnapshotFrame>,
        at_least: u64,
        within: Duration,
    ) -> Result<SnapshotFrame, Box<dyn std::error::Error>> {
        let f = tokio::time::timeout(within, frames.wait_for(|f| f.version >= at_least))
            .await
            .map_err(|_| format!("no version {at_least} within {within:?}"))??;
        Ok(f.clone())
    }

    #[tokio::test]
    async fn the_hub_publishes_on_a_nudge_without_waiting_for_the_poll() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&format!("sqlite://{}/cm.db", dir.path().display())).await?;
        let cancel = CancellationToken::new();
        let hub = SnapshotHub::start(
            store.clone(),
            MasterKey::generate()?,
            "cp".into(),
            vec!["10.0.0.0/8".into()],
            Duration::from_secs(3600),
            cancel.clone(),
        )
        .await?;
        let mut frames = hub.frames();
        let before = frames.borrow().version;
        store.create_pool(&Actor::new("test"), "nudged").await?;
        hub.nudge();
        let f = wait_for_version(&mut frames, before + 1, Duration::from_secs(5)).await?;
        // The frame is the snapshot the hub holds, encoded.
        let current = hub.current();
        assert_eq!(current.version, f.version);
        assert!(current.pools.iter().any(|p| p.name == "nudged"));
        assert_eq!(current.trusted_proxies, ["10.0.0.0/8"]);
        assert_eq!(
            pb::SubscribeResponse::decode(&f.bytes[5..])?,
            pb::SubscribeResponse {
                kind: Some(pb::subscribe_response::Kind::Snapshot((*current).clone()))
            }
        );
        cancel.cancel();
        hub.join().await;
        Ok(())
    }

    #[tokio::test]
    async fn the_hub_sees_other_writers_by_polling() -> TestResult {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/cm.db", dir.path().display());
        let store = Store::open(&url).await?;
        let cancel = CancellationToken::new();
        let hub = SnapshotHub::start(
            store,
            MasterKey::generate()?,
            "cp".into(),
            Vec::new(),
            Duration::from_millis(20),
            cancel.clone(),
        )
        .await?;
        let mut frames = hub.frames();
        let before = frames.borrow().version;
        // Another handle on the file, as the CLI would be: no nudge.
        let other = Store::open(&url).await?;
        other.create_pool(&Actor::new("cli"), "polled").await?;
        wait_for_version(&mut frames, before + 1, Duration::from_secs(5)).await?;
        assert!(hub.current().pools.iter().any(|p| p.name == "polled"));
        cancel.cancel();
        hub.join().await;
        Ok(())
    }
}
