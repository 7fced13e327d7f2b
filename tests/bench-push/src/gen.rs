//! Realistic-looking data: JWT-shaped access tokens of 1–2 KB, account ids, quota, key hashes.
//!
//! Deterministic (a seeded SplitMix64), so two runs build the same snapshot.

use base64::Engine;
use codexmesh_proto::v1 as pb;
use serde_json::json;

/// SplitMix64: small, fast, good enough to spread sizes and ids.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..n)
            .map(|_| char::from(A[(self.next_u64() % A.len() as u64) as usize]))
            .collect()
    }

    pub fn b64url(&mut self, n_bytes: usize) -> String {
        let bytes: Vec<u8> = (0..n_bytes).map(|_| self.next_u64() as u8).collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn uuid(&mut self) -> String {
        let h = format!("{:016x}{:016x}", self.next_u64(), self.next_u64());
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

fn b64_json(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub const PLANS: [&str; 3] = ["plus", "pro", "team"];

/// One synthetic ChatGPT login.
pub struct Login {
    pub chatgpt_account_id: String,
    pub user_id: String,
    pub email: String,
    pub plan: &'static str,
    pub exp_unix: i64,
    pub access_token: String,
    pub id_token: String,
    pub refresh_token: String,
}

/// An RS256-looking JWT (unsigned: a random 256-byte "signature") of total length in
/// 1024..=2048 characters, with the claims the control plane reads (account id, plan, exp).
pub fn login(rng: &mut Rng, n: usize, now_unix: i64) -> Login {
    let chatgpt_account_id = rng.uuid();
    let user_id = format!("user-{}", rng.alnum(24));
    let email = format!("bench{n}@example.com");
    let plan = PLANS[n % PLANS.len()];
    let exp_unix = now_unix + 30 * 86_400;
    let ns = "https://api.openai.com/auth";
    let header = b64_json(&json!({"alg": "RS256", "kid": rng.uuid(), "typ": "JWT"}));
    let signature = rng.b64url(256);
    let target = usize::try_from(rng.range(1024, 2048)).unwrap_or(1500);
    let base_claims = |pad: &str| {
        json!({
            "aud": ["https://api.openai.com/v1"],
            "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
            "exp": exp_unix,
            "iat": now_unix,
            "iss": "https://auth.openai.com",
            "jti": rng_free_jti(n),
            "nbf": now_unix,
            "scp": ["openid", "profile", "email", "offline_access"],
            "sub": format!("auth0|{n:024}"),
            ns: {
                "chatgpt_account_id": chatgpt_account_id,
                "chatgpt_plan_type": plan,
                "chatgpt_user_id": user_id,
                "user_id": user_id,
            },
            "https://api.openai.com/profile": {"email": email, "email_verified": true},
            "pad": pad,
        })
    };
    let without_pad = header.len() + 2 + signature.len() + b64_json(&base_claims("")).len();
    // base64 makes 4 characters of 3 bytes: pad (JSON chars) ≈ 3/4 of the characters missing.
    let pad_chars = target.saturating_sub(without_pad) * 3 / 4;
    let pad = rng.alnum(pad_chars);
    let access_token = format!("{header}.{}.{signature}", b64_json(&base_claims(&pad)));
    let id_token = format!(
        "{header}.{}.{}",
        b64_json(&json!({
            "email": email,
            "exp": exp_unix,
            ns: {"chatgpt_account_id": chatgpt_account_id, "chatgpt_plan_type": plan,
                 "chatgpt_user_id": user_id},
        })),
        rng.b64url(256)
    );
    let refresh_token = format!("rt_{}", rng.alnum(60));
    Login {
        chatgpt_account_id,
        user_id,
        email,
        plan,
        exp_unix,
        access_token,
        id_token,
        refresh_token,
    }
}

fn rng_free_jti(n: usize) -> String {
    format!("jti-{n:012}")
}

/// Quota windows as the control plane summarises them: primary 5 h, secondary weekly.
pub fn quota(rng: &mut Rng, now_unix: i64) -> pb::QuotaSummary {
    pb::QuotaSummary {
        primary: Some(pb::QuotaWindow {
            used_percent: (rng.unit() * 900.0).round() / 10.0,
            window_minutes: 300,
            resets_at_unix: now_unix + i64::try_from(rng.range(600, 18_000)).unwrap_or(3600),
        }),
        secondary: Some(pb::QuotaWindow {
            used_percent: (rng.unit() * 900.0).round() / 10.0,
            window_minutes: 10_080,
            resets_at_unix: now_unix + i64::try_from(rng.range(3600, 604_800)).unwrap_or(86_400),
        }),
        observed_at_unix_ms: now_unix * 1000 - i64::try_from(rng.range(0, 60_000)).unwrap_or(0),
    }
}

/// Raw pool key of the product's shape (`cmk_` + 40 alphanumerics).
pub fn raw_key(rng: &mut Rng) -> String {
    format!("cmk_{}", rng.alnum(40))
}

/// How many keys a deployment of `accounts` accounts over `pools` pools has: one per ten
/// accounts (people share pools), at least one per pool.
pub fn key_count(accounts: usize, pools: usize) -> usize {
    (accounts / 10).max(pools)
}

/// A snapshot as the control plane would build it (`control-plane/src/snapshot.rs`).
pub struct BuiltSnapshot {
    pub snapshot: pb::Snapshot,
    /// Raw keys, in the order of their pools' keys (for lookups).
    pub raw_keys: Vec<String>,
    pub account_ids: Vec<String>,
}

pub fn snapshot(accounts: usize, pools: usize, seed: u64) -> BuiltSnapshot {
    let mut rng = Rng::new(seed);
    let now_unix = 1_790_000_000;
    let pools = pools.max(1);
    let mut out: Vec<pb::Pool> = (0..pools)
        .map(|p| pb::Pool {
            id: format!("pool_{}", rng.alnum(20)),
            name: format!("bench-{p:03}"),
            routing: Some(pb::RoutingSettings {
                strategy: pb::Strategy::QuotaFirst as i32,
                max_attempts: 3,
                ..Default::default()
            }),
            keys: Vec::new(),
            accounts: Vec::new(),
            allowed_cidrs: Vec::new(),
        })
        .collect();
    let mut raw_keys = Vec::new();
    for k in 0..key_count(accounts, pools) {
        let raw = raw_key(&mut rng);
        let pool = &mut out[k % pools];
        pool.keys.push(pb::PoolKey {
            id: format!("key_{}", rng.alnum(20)),
            key_hash: codexmesh_filter_core::auth::hash_key(&raw).to_vec(),
            status: if k % 50 == 49 {
                pb::KeyStatus::Revoked
            } else {
                pb::KeyStatus::Active
            } as i32,
            label: format!("key-{k}"),
            routing_override: None,
            operator: k % 100 == 0,
            policy: None,
            usage: None,
        });
        raw_keys.push(raw);
    }
    let mut account_ids = Vec::new();
    for n in 0..accounts {
        let login = login(&mut rng, n, now_unix);
        let id = format!("acc_{}", rng.alnum(20));
        // Mostly active; a few paused, cooling down or needing re-auth, as in a real fleet (the
        // first accounts of each pool are active, so even a pool of one can serve).
        let (state, reason, cooldown) = match (n / pools) % 40 {
            37 => (pb::AccountState::Paused, "paused by cli:ops".to_owned(), 0),
            38 => (pb::AccountState::CoolingDown, String::new(), now_unix + 900),
            39 => (
                pb::AccountState::NeedsReauth,
                "refresh_token_reused".to_owned(),
                0,
            ),
            _ => (pb::AccountState::Active, String::new(), 0),
        };
        let account = pb::Account {
            id: id.clone(),
            label: login.email.clone(),
            chatgpt_account_id: login.chatgpt_account_id.clone(),
            access_token: login.access_token,
            state: state as i32,
            cooldown_until_unix: cooldown,
            priority: u32::try_from(n % 5).unwrap_or(0),
            weight: 1,
            quota: Some(quota(&mut rng, now_unix)),
            health: u32::try_from(rng.range(80, 100)).unwrap_or(100),
            plan: login.plan.to_owned(),
            access_token_expires_at_unix: login.exp_unix,
            state_reason: reason,
            token_revision: rng.range(1, 100_000),
            // The benchmark's pools are Codex pools.
            provider: pb::Provider::Codex as i32,
            credential_kind: pb::CredentialKind::Oauth as i32,
            project_id: String::new(),
            egress_proxy: String::new(),
        };
        out[n % pools].accounts.push(account);
        account_ids.push(id);
    }
    BuiltSnapshot {
        snapshot: pb::Snapshot {
            version: 123_456,
            generated_at_unix_ms: now_unix * 1000,
            pools: out,
            control_plane_id: "bench-host/abc123".to_owned(),
            trusted_proxies: Vec::new(),
        },
        raw_keys,
        account_ids,
    }
}
