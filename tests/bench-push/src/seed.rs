//! `seed`: writes pools, one key per pool and N accounts (JWT-shaped 1–2 KB tokens that expire in
//! 30 days, quota rows) straight into the store named by the usual settings (`CODEXMESH_STORE`,
//! `CODEXMESH_DATA_DIR`, `CODEXMESH_MASTER_KEY`: resolved like the CLI does), through the control
//! plane's library, as `push`'s setup does. For benchmarks only: importing thousands of accounts
//! one CLI process at a time takes minutes. Prints the pools and their raw keys as JSON on stdout
//! (progress on stderr).

use std::time::Instant;

use anyhow::{Context, Result};
use codexmesh_control_plane::authjson::CodexCredentials;
use codexmesh_control_plane::config::{Settings, SettingsFlags};
use codexmesh_control_plane::store::{Actor, QuotaRecord, Store, WindowEvidence};
use serde_json::{json, Value};

use crate::gen::{self, Rng};

pub struct Options {
    pub accounts: usize,
    pub pools: usize,
    /// Pools are named `<prefix>-000`, `<prefix>-001`, …
    pub prefix: String,
    pub seed: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub async fn run(opts: &Options) -> Result<Value> {
    let settings = Settings::from_env(&SettingsFlags::default()).context("resolve the settings")?;
    if let Some(path) = settings.sqlite_path() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
    }
    let key = settings.master_key().context("master key")?;
    let store = Store::open(&settings.store)
        .await
        .with_context(|| format!("open store {}", settings.store))?;
    store
        .verify_master_key(&key)
        .await
        .context("the store was sealed with another master key")?;
    let actor = Actor("bench-seed".to_owned());
    let mut rng = Rng::new(opts.seed);
    let now_unix = now_ms() / 1000;
    let pools = opts.pools.max(1);
    let t0 = Instant::now();

    let mut out_pools = Vec::with_capacity(pools);
    for p in 0..pools {
        let name = format!("{}-{p:03}", opts.prefix);
        store
            .create_pool(&actor, &name)
            .await
            .with_context(|| format!("create pool {name}"))?;
        let raw = gen::raw_key(&mut rng);
        let hash = codexmesh_control_plane::keys::hash_key(&raw);
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        store
            .create_key(&actor, &name, None, false, &hex)
            .await
            .with_context(|| format!("create a key for {name}"))?;
        out_pools.push((name, raw, 0usize));
    }

    let mut ids = Vec::with_capacity(opts.accounts);
    for n in 0..opts.accounts {
        let login = gen::login(&mut rng, n, now_unix);
        let creds = CodexCredentials {
            id_token: login.id_token,
            access_token: login.access_token,
            refresh_token: login.refresh_token,
            chatgpt_account_id: login.chatgpt_account_id,
            chatgpt_user_id: Some(login.user_id),
            email: Some(login.email.clone()),
            plan: Some(login.plan.to_owned()),
            access_token_expires_at_ms: Some(login.exp_unix * 1000),
        };
        let pool = &mut out_pools[n % pools];
        let done = store
            .import_account(&actor, &pool.0, Some(&login.email), &creds, &key)
            .await
            .with_context(|| format!("import account {n}"))?;
        pool.2 += 1;
        ids.push(done.account.id);
        if (n + 1) % 2000 == 0 {
            eprintln!(
                "seed: {}/{} accounts ({:.1} s)",
                n + 1,
                opts.accounts,
                t0.elapsed().as_secs_f64()
            );
        }
    }

    let now = now_ms();
    for id in &ids {
        let q = gen::quota(&mut rng, now_unix);
        let window = |w: Option<codexmesh_proto::v1::QuotaWindow>| {
            w.map(|w| WindowEvidence {
                used_percent: w.used_percent,
                window_minutes: i64::from(w.window_minutes),
                resets_at_unix: w.resets_at_unix,
                observed_at_ms: now,
                source: "poll".to_owned(),
            })
        };
        let record = QuotaRecord {
            primary: window(q.primary),
            secondary: window(q.secondary),
            credits: None,
            plan: None,
            plan_observed_at_ms: 0,
            version: 0,
        };
        store
            .write_quota(id, None, &record, false)
            .await
            .context("write quota")?;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "seed: {} pools, {} keys, {} accounts with quota in {secs:.1} s",
        pools, pools, opts.accounts
    );
    Ok(json!({
        "accounts": opts.accounts,
        "seconds": secs,
        "pools": out_pools
            .iter()
            .map(|(name, key, n)| json!({"name": name, "key": key, "accounts": n}))
            .collect::<Vec<_>>(),
    }))
}
