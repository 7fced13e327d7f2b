//! What the downstream filter hands to every upstream attempt, through Envoy filter state.
//!
//! Filter state never leaves Envoy, so this is where the ranking lives between the router's
//! attempts. Only ids travel here: credentials are looked up in the snapshot at attempt time.

use crate::pb;
use crate::routing::{self, Ranking, SPARE_CANDIDATES};

/// The filter-state property name (`set_property(["codexmesh.route"])`).
pub const PROPERTY: &str = "codexmesh.route";

/// Filter-state flag the listener filter sets when the client's stream ends before its answer
/// completed. Envoy destroys the listener filter before the router, and the router resets its
/// attempts on destroy, so every attempt still running then sees the flag in its `on_done`.
pub const CLIENT_GONE_PROPERTY: &str = "codexmesh.client_gone";

const FORMAT_TAG: &str = "cmr3";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteHandoff {
    pub snapshot_version: u64,
    pub pool_id: String,
    pub key_id: String,
    pub max_attempts: u32,
    /// Account ids in the order the attempts should take them.
    pub ranked_accounts: Vec<String>,
    /// Strategy name and why the first account was chosen, for explanations and logs.
    pub strategy: String,
    pub reason: String,
    /// Whether answers carry `x-codexmesh-route`.
    pub explain: bool,
    /// The allowlisted endpoint the downstream filter admitted (`Endpoint::as_str`); the
    /// upstream filter injects credentials only into a request for it.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffError {
    Malformed(&'static str),
    /// An id contains a separator; the control plane never issues such ids.
    BadId,
}

impl std::fmt::Display for HandoffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "route hand-off is malformed: {what}"),
            Self::BadId => write!(f, "route hand-off id contains a separator"),
        }
    }
}

fn check_id(id: &str) -> Result<(), HandoffError> {
    if id.contains(['\n', ',']) {
        Err(HandoffError::BadId)
    } else {
        Ok(())
    }
}

impl RouteHandoff {
    /// The hand-off for a ranked request: as many attempts as the settings allow and there are
    /// candidates, and only the candidates those attempts can use (plus [`SPARE_CANDIDATES`]).
    pub fn for_ranking(
        snapshot_version: u64,
        pool: &pb::Pool,
        key: &pb::PoolKey,
        settings: Option<&pb::RoutingSettings>,
        ranking: &Ranking<'_>,
        endpoint: &str,
    ) -> Self {
        let attempts = routing::max_attempts(settings)
            .min(u32::try_from(ranking.accounts.len()).unwrap_or(u32::MAX));
        let carried = usize::try_from(attempts)
            .unwrap_or(usize::MAX)
            .saturating_add(SPARE_CANDIDATES);
        Self {
            snapshot_version,
            pool_id: pool.id.clone(),
            key_id: key.id.clone(),
            max_attempts: attempts,
            ranked_accounts: ranking
                .accounts
                .iter()
                .take(carried)
                .map(|a| a.id.clone())
                .collect(),
            strategy: routing::strategy_name(ranking.strategy).to_string(),
            reason: ranking.reason.as_str().to_string(),
            explain: key.operator || settings.is_some_and(|s| s.explain_routes),
            endpoint: endpoint.to_string(),
        }
    }

    /// A line-based text form: cheap to write and read in wasm, readable in a debugger.
    pub fn encode(&self) -> Result<Vec<u8>, HandoffError> {
        check_id(&self.pool_id)?;
        check_id(&self.key_id)?;
        check_id(&self.strategy)?;
        check_id(&self.reason)?;
        check_id(&self.endpoint)?;
        for id in &self.ranked_accounts {
            check_id(id)?;
        }
        Ok(format!(
            "{FORMAT_TAG}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.snapshot_version,
            self.pool_id,
            self.key_id,
            self.max_attempts,
            self.ranked_accounts.join(","),
            self.strategy,
            self.reason,
            u8::from(self.explain),
            self.endpoint,
        )
        .into_bytes())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, HandoffError> {
        let text = std::str::from_utf8(bytes).map_err(|_| HandoffError::Malformed("not utf-8"))?;
        let mut lines = text.split('\n');
        if lines.next() != Some(FORMAT_TAG) {
            return Err(HandoffError::Malformed("unknown format tag"));
        }
        let mut next = |what| lines.next().ok_or(HandoffError::Malformed(what));
        let snapshot_version = next("version")?
            .parse()
            .map_err(|_| HandoffError::Malformed("version"))?;
        let pool_id = next("pool")?.to_string();
        let key_id = next("key")?.to_string();
        let max_attempts = next("max attempts")?
            .parse()
            .map_err(|_| HandoffError::Malformed("max attempts"))?;
        let accounts = next("accounts")?;
        let ranked_accounts = if accounts.is_empty() {
            Vec::new()
        } else {
            accounts.split(',').map(str::to_string).collect()
        };
        let strategy = next("strategy")?.to_string();
        let reason = next("reason")?.to_string();
        let explain = next("explain")? == "1";
        let endpoint = next("endpoint")?.to_string();
        Ok(Self {
            snapshot_version,
            pool_id,
            key_id,
            max_attempts,
            ranked_accounts,
            strategy,
            reason,
            explain,
            endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trip() {
        let h = RouteHandoff {
            snapshot_version: u64::MAX,
            pool_id: "p".into(),
            key_id: "k".into(),
            max_attempts: 3,
            ranked_accounts: vec!["a".into(), "b".into()],
            strategy: "quota_first".into(),
            reason: "affinity".into(),
            explain: true,
            endpoint: "responses".into(),
        };
        assert_eq!(RouteHandoff::decode(&h.encode().unwrap()).unwrap(), h);
        let empty = RouteHandoff::default();
        assert_eq!(
            RouteHandoff::decode(&empty.encode().unwrap()).unwrap(),
            empty
        );
    }

    #[test]
    fn rejects_garbage_and_separators() {
        assert!(RouteHandoff::decode(b"").is_err());
        assert!(RouteHandoff::decode(b"cmr3\nx\np\nk\n3\na\ns\nr\n0\nresponses").is_err());
        assert!(RouteHandoff::decode(b"cmr3\n1\np").is_err());
        // The previous format (no endpoint) is refused: a hand-off never outlives its request.
        assert!(RouteHandoff::decode(b"cmr2\n1\np\nk\n3\na\ns\nr\n0").is_err());
        assert!(RouteHandoff::decode(b"cmr1\n1\np\nk\n3\na").is_err());
        assert!(RouteHandoff::decode(&[0xff, 0xfe]).is_err());
        let bad = RouteHandoff {
            ranked_accounts: vec!["a,b".into()],
            ..Default::default()
        };
        assert_eq!(bad.encode().unwrap_err(), HandoffError::BadId);
    }

    #[test]
    fn a_large_pool_hands_off_only_what_the_attempts_can_use() {
        let accounts: Vec<pb::Account> = (0..1000)
            .map(|i| pb::Account {
                id: format!("acc-{i:04}"),
                ..Default::default()
            })
            .collect();
        let pool = pb::Pool {
            id: "p".into(),
            ..Default::default()
        };
        let key = pb::PoolKey {
            id: "k".into(),
            operator: true,
            ..Default::default()
        };
        let ranking = Ranking {
            accounts: accounts.iter().collect(),
            reason: routing::Reason::Affinity,
            strategy: pb::Strategy::QuotaFirst,
            probes: Vec::new(),
        };
        let h = RouteHandoff::for_ranking(7, &pool, &key, None, &ranking, "responses");
        assert_eq!(h.max_attempts, routing::DEFAULT_MAX_ATTEMPTS);
        assert_eq!(
            h.ranked_accounts.len(),
            routing::DEFAULT_MAX_ATTEMPTS as usize + SPARE_CANDIDATES
        );
        assert_eq!(h.ranked_accounts[0], "acc-0000");
        assert!(h.explain, "operator keys get explanations");
        assert_eq!(
            (h.reason.as_str(), h.endpoint.as_str()),
            ("affinity", "responses")
        );
        // Fewer candidates than attempts: the attempts shrink to the candidates.
        let two = Ranking {
            accounts: accounts.iter().take(2).collect(),
            ..ranking
        };
        let h = RouteHandoff::for_ranking(7, &pool, &key, None, &two, "responses");
        assert_eq!((h.max_attempts, h.ranked_accounts.len()), (2, 2));
    }
}
