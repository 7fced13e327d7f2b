//! `seed`: writes pools, one key per pool and N accounts (JWT-shaped 1–2 KB tokens that expire in
//! 30 days, quota rows) straight into the store named by the usual settings (`CODEXMESH_STORE`,
//! `CODEXMESH_DATA_DIR`, `CODEXMESH_MASTER_KEY`: resolved like the CLI does), through the control
//! plane's library, as `push`'s setup does. For benchmarks only: importing thousands of accounts
//! one CLI process at a time takes minutes. Prints the pools and their raw keys as JSON on stdout
//! (progress on stderr).

use std::time::Instant;

use anyhow::{Context, Result};
use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_model::util::now_ms;
use codexmesh_store::{Actor, Store};
use serde_json::{json, Value};

use crate::fill;
use crate::gen::{self, Rng};

pub struct Options {
    pub accounts: usize,
    pub pools: usize,
    /// Pools are named `<prefix>-000`, `<prefix>-001`, …
    pub prefix: String,
    pub seed: u64,
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
    let actor = Actor::new("bench-seed".to_owned());
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
        let raw = fill::create_key(&store, &actor, &name, &mut rng).await?;
        out_pools.push((name, raw, 0usize));
    }

    let mut ids = Vec::with_capacity(opts.accounts);
    for n in 0..opts.accounts {
        let login = gen::login(&mut rng, n, now_unix);
        let email = login.email.clone();
        let creds = fill::credentials(login);
        let pool = &mut out_pools[n % pools];
        let done = store
            .import_account(&actor, &pool.0, Some(&email), &creds, &key)
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

    fill::write_quota_rows(&store, &ids, &mut rng, now_unix, now_ms()).await?;
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
