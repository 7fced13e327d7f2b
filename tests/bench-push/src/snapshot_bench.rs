//! `snapshot`: encoded size, decode time and per-request lookup cost by number of accounts.

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use codexmesh_filter_core::auth;
use codexmesh_filter_core::handoff::RouteHandoff;
use codexmesh_filter_core::local::{LocalAccount, LocalTable};
use codexmesh_filter_core::ranker::RankCache;
use codexmesh_filter_core::routing::{self, Limits, RouteInput};
use codexmesh_filter_core::snapshot::SnapshotIndex;
use codexmesh_model::util::now_ms;
use prost::Message;
use serde_json::{json, Value};

use crate::gen;
use crate::stats::{fmt_bytes, fmt_ms, summarize, Summary};

pub struct Options {
    pub accounts: Vec<usize>,
    pub pools: usize,
    /// Time budget per measured operation and size.
    pub budget: Duration,
}

/// Runs `f` repeatedly (at least `min`, at most `max` times, within `budget` after `min`) and
/// returns each run's wall time in ms. One untimed warm-up run first.
fn time_each<F: FnMut() -> Result<()>>(
    budget: Duration,
    min: usize,
    max: usize,
    mut f: F,
) -> Result<Vec<f64>> {
    f()?;
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < max && (out.len() < min || start.elapsed() < budget) {
        let t = Instant::now();
        f()?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// Times batches of `batch` calls of a cheap operation; returns per-call ms for each batch.
fn time_batched<F: FnMut(usize) -> Result<()>>(
    budget: Duration,
    batch: usize,
    mut f: F,
) -> Result<Vec<f64>> {
    let mut i = 0usize;
    time_each(budget, 20, 100_000, || {
        for _ in 0..batch {
            f(i)?;
            i = i.wrapping_add(1);
        }
        Ok(())
    })
    .map(|v| v.into_iter().map(|ms| ms / batch as f64).collect())
}

struct Row {
    accounts: usize,
    pools: usize,
    keys: usize,
    bytes: usize,
    build_ms: f64,
    measures: Vec<(&'static str, Summary)>,
}

pub fn run(opts: &Options) -> Result<Value> {
    println!(
        "snapshot bench: pools={} budget={:?} per measure (native build of filter-core; the wasm \
         module in Envoy runs the same code slower)",
        opts.pools, opts.budget
    );
    let mut rows = Vec::new();
    for &n in &opts.accounts {
        let t = Instant::now();
        let built = gen::snapshot(n, opts.pools, 0xC0DE_0000 + n as u64);
        let build_ms = t.elapsed().as_secs_f64() * 1000.0;
        let bytes = built.snapshot.encode_to_vec();
        let keys = built.raw_keys.len();
        let budget = opts.budget;
        let mut measures = Vec::new();

        let decode = time_each(budget, 5, 10_000, || {
            let ix = SnapshotIndex::decode(&bytes).map_err(|e| anyhow!("{e}"))?;
            black_box(ix);
            Ok(())
        })?;
        measures.push(("decode", summarize(&decode)));

        // What the control plane does per subscriber per change: clone the Snapshot into the
        // stream's message, then tonic encodes it.
        let snap = &built.snapshot;
        let clone_encode = time_each(budget, 5, 10_000, || {
            let msg = codexmesh_proto::v1::SubscribeResponse {
                kind: Some(codexmesh_proto::v1::subscribe_response::Kind::Snapshot(
                    snap.clone(),
                )),
            };
            black_box(msg.encode_to_vec());
            Ok(())
        })?;
        measures.push(("cp_clone_encode", summarize(&clone_encode)));

        let index = SnapshotIndex::decode(&bytes).map_err(|e| anyhow!("{e}"))?;
        let hashes: Vec<[u8; 32]> = built.raw_keys.iter().map(|k| auth::hash_key(k)).collect();
        let ids = &built.account_ids;
        if hashes.is_empty() || ids.is_empty() {
            return Err(anyhow!("empty snapshot at {n} accounts"));
        }
        // Spread lookups over the table so caches do not make a large table look small.
        let stride = 7919usize;
        let key_lookup = time_batched(budget / 4, 1000, |i| {
            let h = &hashes[(i * stride) % hashes.len()];
            black_box(index.key_by_hash(h)).ok_or_else(|| anyhow!("key missing"))?;
            Ok(())
        })?;
        measures.push(("key_by_hash", summarize(&key_lookup)));
        let account_lookup = time_batched(budget / 4, 1000, |i| {
            let id = &ids[(i * stride) % ids.len()];
            black_box(index.account(id)).ok_or_else(|| anyhow!("account missing"))?;
            Ok(())
        })?;
        measures.push(("account", summarize(&account_lookup)));

        // The downstream filter's per-request work after auth: rank the key's pool (with the
        // worker's rank cache, as the filter does; the clock runs, so the cache's periodic full
        // pass is in the numbers), write the hand-off. Pool of the first active key.
        let index = Rc::new(index);
        let local = Rc::new(LocalTable::default());
        let raw = built
            .raw_keys
            .iter()
            .find(|k| {
                index
                    .key_by_hash(&auth::hash_key(k))
                    .is_some_and(|(_, key)| key.status == 1)
            })
            .ok_or_else(|| anyhow!("no active key"))?
            .clone();
        let bearer = format!("Bearer {raw}");
        // Sessions differ per request: nothing is cached per session key.
        let sessions: Vec<String> = (0..1024).map(|i| format!("session-{i:016x}")).collect();
        // A local table that moves on every request (an answer wrote quota evidence each time):
        // the rank cache re-checks candidates against each one.
        let churn: Vec<Rc<LocalTable>> = (0..64)
            .map(|i| {
                let mut t = LocalTable::default();
                if let Some(id) = ids.get((i * stride) % ids.len()) {
                    t.set(
                        id,
                        LocalAccount {
                            cooldown_until_ms: now_ms() + 3_600_000,
                            ..Default::default()
                        },
                    );
                }
                Rc::new(t)
            })
            .collect();
        let mut cache = RankCache::default();
        let mut turn = 0u64;
        let mut last_handoff = Vec::new();
        let mut downstream = |affinity: bool, local: &Rc<LocalTable>| -> Result<()> {
            let authed = auth::authenticate(&index, Some(&bearer))
                .map_err(|e| anyhow!("auth: {}", e.message))?;
            let pool_ix = index
                .pools()
                .iter()
                .position(|p| std::ptr::eq(p, authed.pool))
                .ok_or_else(|| anyhow!("pool not in the index"))?;
            let settings = routing::effective_routing(authed.pool, authed.key);
            turn += 1;
            let session = usize::try_from(turn).unwrap_or(0) % sessions.len();
            let input = RouteInput {
                affinity_key: affinity.then(|| sessions[session].as_str()),
                turn_state_account: None,
                turn,
            };
            let ranking = cache
                .rank(&index, pool_ix, settings, local, input, now_ms())
                .map_err(|e| anyhow!("rank: {}", e.message))?;
            let handoff = RouteHandoff::for_ranking(
                index.version(),
                authed.pool,
                authed.key,
                settings,
                &ranking,
                "responses",
            );
            last_handoff = handoff.encode().map_err(|e| anyhow!("{e}"))?;
            Ok(())
        };
        let req = time_each(budget / 2, 20, 100_000, || downstream(false, &local))?;
        measures.push(("request_rank_handoff", summarize(&req)));
        let req_aff = time_each(budget / 2, 20, 100_000, || downstream(true, &local))?;
        measures.push(("request_rank_handoff_affinity", summarize(&req_aff)));
        let mut i = 0usize;
        let req_churn = time_each(budget / 2, 20, 100_000, || {
            i = i.wrapping_add(1);
            let local = churn
                .get(i % churn.len())
                .ok_or_else(|| anyhow!("no local table"))?;
            downstream(false, local)
        })?;
        measures.push(("request_rank_handoff_local_churn", summarize(&req_churn)));
        let now = now_ms();
        let handoff_bytes = last_handoff.len();

        // The upstream filter per attempt: read the hand-off, take attempt 1's account.
        let limits = Limits::from_settings(None);
        let upstream = time_each(budget / 4, 20, 100_000, || {
            let h = RouteHandoff::decode(&last_handoff).map_err(|e| anyhow!("{e}"))?;
            let a = routing::account_for_attempt(
                &h.ranked_accounts,
                1,
                |id| index.account(id).map(|(_, a)| a),
                &local,
                &limits,
                now,
            );
            black_box(a);
            Ok(())
        })?;
        measures.push(("attempt_handoff_decode", summarize(&upstream)));

        let row = Row {
            accounts: n,
            pools: opts.pools,
            keys,
            bytes: bytes.len(),
            build_ms,
            measures,
        };
        print_row(&row, handoff_bytes);
        rows.push((row, handoff_bytes));
    }
    Ok(json!({
        "pools": opts.pools,
        "budget_ms": opts.budget.as_millis() as u64,
        "unit": "ms per operation",
        "sizes": rows.iter().map(|(r, hb)| json!({
            "accounts": r.accounts,
            "pools": r.pools,
            "keys": r.keys,
            "encoded_bytes": r.bytes,
            "bytes_per_account": r.bytes as f64 / r.accounts.max(1) as f64,
            "handoff_bytes": hb,
            "generate_ms": r.build_ms,
            "ms": r.measures.iter().map(|(k, s)| ((*k).to_owned(), s.json()))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    }))
}

fn print_row(r: &Row, handoff_bytes: usize) {
    println!(
        "\naccounts={} pools={} keys={}: encoded {} ({} B/account), hand-off {} per request",
        r.accounts,
        r.pools,
        r.keys,
        fmt_bytes(r.bytes as f64),
        r.bytes / r.accounts.max(1),
        fmt_bytes(handoff_bytes as f64)
    );
    println!(
        "  {:<33} {:>8} {:>11} {:>11} {:>11}",
        "measure", "n", "p50", "p99", "max"
    );
    for (name, s) in &r.measures {
        println!(
            "  {:<33} {:>8} {:>11} {:>11} {:>11}",
            name,
            s.n,
            fmt_ms(s.p50),
            fmt_ms(s.p99),
            fmt_ms(s.max)
        );
    }
}
