//! Routing settings: what operators set per pool (and optionally per key), as the store keeps
//! them, as people see them, and as changes to them are parsed and checked.
//!
//! Stored numbers are `None` for "the default"; the snapshot sends those as 0, which the filter
//! reads as the default. The defaults are the contract crate's (`codexmesh_proto::defaults`),
//! which the filter decides with: the control plane only uses them to *show* effective values.

use std::ops::RangeInclusive;

use codexmesh_proto::defaults;
use codexmesh_proto::v1 as pb;
use serde::{Serialize, Serializer};

string_enum!(
    /// How a pool ranks its accounts (the filter implements them; stored here).
    Strategy {
        RoundRobin = "round_robin",
        QuotaFirst = "quota_first",
        PrimaryFirst = "primary_first",
        PriorityOrder = "priority_order",
    }
);

/// The product default for new pools (and for a custom key row missing its strategy): the
/// contract's default strategy, as the store spells it.
pub const DEFAULT_STRATEGY: Strategy = match defaults::STRATEGY {
    pb::Strategy::RoundRobin => Strategy::RoundRobin,
    pb::Strategy::PrimaryFirst => Strategy::PrimaryFirst,
    pb::Strategy::PriorityOrder => Strategy::PriorityOrder,
    pb::Strategy::QuotaFirst | pb::Strategy::Unspecified => Strategy::QuotaFirst,
};

/// Upstream attempts per request: the filter caps them because Envoy buffers the body for
/// every retry.
pub const MAX_ATTEMPTS: RangeInclusive<u32> = 1..=defaults::MAX_ATTEMPTS_CAP;
/// Below a second the breaker would flap on every burst; the proto field is u32 milliseconds.
pub const MIN_DURATION_MS: u32 = 1_000;
pub const WEIGHT: RangeInclusive<u32> = 1..=1000;

/// Whether a key follows its pool's routing or carries its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    Inherit,
    Custom,
}

impl RoutingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inherit => "inherit",
            Self::Custom => "custom",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inherit" => Some(Self::Inherit),
            "custom" => Some(Self::Custom),
            _ => None,
        }
    }
}

impl std::fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Routing settings as stored. `None` = the default.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub strategy: Strategy,
    pub max_attempts: u32,
    pub explain_routes: bool,
    /// primary_first's owner (an account id in the same pool).
    pub primary_account_id: Option<String>,
    pub primary_threshold_percent: Option<f64>,
    pub secondary_threshold_percent: Option<f64>,
    pub circuit_failures: Option<u32>,
    pub circuit_open_ms: Option<u32>,
    pub cooldown_max_ms: Option<u32>,
    /// WebSocket upgrades are pooled (true, the default) or answered 426.
    pub websockets: bool,
}

impl Default for Routing {
    /// What a new pool starts with.
    fn default() -> Self {
        Self {
            strategy: DEFAULT_STRATEGY,
            max_attempts: defaults::MAX_ATTEMPTS,
            explain_routes: false,
            primary_account_id: None,
            primary_threshold_percent: None,
            secondary_threshold_percent: None,
            circuit_failures: None,
            circuit_open_ms: None,
            cooldown_max_ms: None,
            websockets: true,
        }
    }
}

/// Effective settings with every default filled in: what `--json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RoutingView {
    pub strategy: Strategy,
    pub max_attempts: u32,
    pub explain_routes: bool,
    /// None: primary_first starts with the first account by priority.
    pub primary_account_id: Option<String>,
    pub primary_threshold_percent: f64,
    pub secondary_threshold_percent: f64,
    pub circuit_failures: u32,
    pub circuit_open_ms: u32,
    pub cooldown_max_ms: u32,
    pub websockets: bool,
}

impl Routing {
    pub fn view(&self) -> RoutingView {
        RoutingView {
            strategy: self.strategy,
            max_attempts: self.max_attempts,
            explain_routes: self.explain_routes,
            primary_account_id: self.primary_account_id.clone(),
            primary_threshold_percent: self
                .primary_threshold_percent
                .unwrap_or(defaults::PRIMARY_THRESHOLD_PERCENT),
            secondary_threshold_percent: self
                .secondary_threshold_percent
                .unwrap_or(defaults::SECONDARY_THRESHOLD_PERCENT),
            circuit_failures: self.circuit_failures.unwrap_or(defaults::CIRCUIT_FAILURES),
            circuit_open_ms: self.circuit_open_ms.unwrap_or(defaults::CIRCUIT_OPEN_MS),
            cooldown_max_ms: self.cooldown_max_ms.unwrap_or(defaults::COOLDOWN_MAX_MS),
            websockets: self.websockets,
        }
    }

    /// These settings with `patch` applied; `primary` is the already resolved owner account
    /// when the patch names one (`Some(None)` clears it).
    pub fn apply(&self, patch: &RoutingPatch, primary: Option<Option<String>>) -> Self {
        Self {
            strategy: patch.strategy.unwrap_or(self.strategy),
            max_attempts: patch.max_attempts.unwrap_or(self.max_attempts),
            explain_routes: patch.explain_routes.unwrap_or(self.explain_routes),
            primary_account_id: primary.unwrap_or_else(|| self.primary_account_id.clone()),
            primary_threshold_percent: patch
                .primary_threshold_percent
                .unwrap_or(self.primary_threshold_percent),
            secondary_threshold_percent: patch
                .secondary_threshold_percent
                .unwrap_or(self.secondary_threshold_percent),
            circuit_failures: patch.circuit_failures.unwrap_or(self.circuit_failures),
            circuit_open_ms: patch.circuit_open_ms.unwrap_or(self.circuit_open_ms),
            cooldown_max_ms: patch.cooldown_max_ms.unwrap_or(self.cooldown_max_ms),
            websockets: patch.websockets.unwrap_or(self.websockets),
        }
    }
}

/// Serialized as the effective view, so every JSON output shows the same shape.
impl Serialize for Routing {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.view().serialize(serializer)
    }
}

/// The owner account a change names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Primary {
    /// `--primary none`.
    Clear,
    /// An account id or label, resolved inside the pool by the store.
    Account(String),
}

/// A change to routing settings: `None` leaves a setting alone; for the nullable settings
/// `Some(None)` puts it back to the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingPatch {
    pub strategy: Option<Strategy>,
    pub max_attempts: Option<u32>,
    pub explain_routes: Option<bool>,
    pub primary: Option<Primary>,
    pub primary_threshold_percent: Option<Option<f64>>,
    pub secondary_threshold_percent: Option<Option<f64>>,
    pub circuit_failures: Option<Option<u32>>,
    pub circuit_open_ms: Option<Option<u32>>,
    pub cooldown_max_ms: Option<Option<u32>>,
    pub websockets: Option<bool>,
}

impl RoutingPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The flags this patch sets, for messages ("--strategy, --primary").
    pub fn flags(&self) -> Vec<&'static str> {
        [
            (self.strategy.is_some(), "--strategy"),
            (self.max_attempts.is_some(), "--max-attempts"),
            (self.explain_routes.is_some(), "--explain"),
            (self.primary.is_some(), "--primary"),
            (
                self.primary_threshold_percent.is_some(),
                "--primary-threshold",
            ),
            (
                self.secondary_threshold_percent.is_some(),
                "--secondary-threshold",
            ),
            (self.circuit_failures.is_some(), "--circuit-failures"),
            (self.circuit_open_ms.is_some(), "--circuit-open-ms"),
            (self.cooldown_max_ms.is_some(), "--cooldown-max-ms"),
            (self.websockets.is_some(), "--websockets"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }

    /// Range checks on typed values: the store runs them again before writing, so a patch
    /// built by other code than the CLI parser cannot store what the filter would misread.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(n) = self.max_attempts {
            check_range("--max-attempts", n, &MAX_ATTEMPTS)?;
        }
        if let Some(Primary::Account(ident)) = &self.primary {
            if ident.trim().is_empty() {
                return Err(InvalidSetting::new(
                    "--primary",
                    ident,
                    "an account id or label, or \"none\"",
                ));
            }
        }
        for (flag, v) in [
            ("--primary-threshold", self.primary_threshold_percent),
            ("--secondary-threshold", self.secondary_threshold_percent),
        ] {
            if let Some(Some(pct)) = v {
                check_percent(flag, pct)?;
            }
        }
        if let Some(Some(n)) = self.circuit_failures {
            check_range("--circuit-failures", n, &(1..=u32::MAX))?;
        }
        for (flag, v) in [
            ("--circuit-open-ms", self.circuit_open_ms),
            ("--cooldown-max-ms", self.cooldown_max_ms),
        ] {
            if let Some(Some(ms)) = v {
                check_range(flag, ms, &(MIN_DURATION_MS..=u32::MAX))?;
            }
        }
        Ok(())
    }
}

/// A flag's value is not acceptable. Names the flag, the value and what would be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {flag} {value:?}: expected {expected}")]
pub struct InvalidSetting {
    pub flag: &'static str,
    pub value: String,
    pub expected: String,
}

impl InvalidSetting {
    fn new(flag: &'static str, value: &str, expected: impl Into<String>) -> Self {
        Self {
            flag,
            // Bounded: the value is echoed to the terminal and the audit never sees it.
            value: value.chars().take(64).collect(),
            expected: expected.into(),
        }
    }
}

fn range_text(range: &RangeInclusive<u32>) -> String {
    if *range.end() == u32::MAX {
        format!("a whole number of at least {}", range.start())
    } else {
        format!("a whole number from {} to {}", range.start(), range.end())
    }
}

/// An account's weight (its share in round robin and session spreading).
pub fn check_weight(w: u32) -> Result<(), InvalidSetting> {
    check_range("--weight", w, &WEIGHT)
}

fn check_range(
    flag: &'static str,
    n: u32,
    range: &RangeInclusive<u32>,
) -> Result<(), InvalidSetting> {
    if range.contains(&n) {
        Ok(())
    } else {
        Err(InvalidSetting::new(flag, &n.to_string(), range_text(range)))
    }
}

const PERCENT_TEXT: &str = "a percentage above 0 and at most 100";

fn check_percent(flag: &'static str, pct: f64) -> Result<(), InvalidSetting> {
    if pct.is_finite() && pct > 0.0 && pct <= 100.0 {
        Ok(())
    } else {
        Err(InvalidSetting::new(flag, &pct.to_string(), PERCENT_TEXT))
    }
}

// ---- parsing flag values (the CLI takes them as text, so bad values exit 1 naming the flag
// instead of clap's generic usage error) ----

pub fn parse_strategy(raw: &str) -> Result<Strategy, InvalidSetting> {
    Strategy::parse(raw.trim()).ok_or_else(|| {
        let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
        InvalidSetting::new("--strategy", raw, format!("one of {}", names.join(", ")))
    })
}

pub fn parse_bool(flag: &'static str, raw: &str) -> Result<bool, InvalidSetting> {
    match raw.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(InvalidSetting::new(flag, raw, "true or false")),
    }
}

/// `on` or `off` (also `true` / `false`).
pub fn parse_on_off(flag: &'static str, raw: &str) -> Result<bool, InvalidSetting> {
    match raw.trim() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(InvalidSetting::new(flag, raw, "on or off")),
    }
}

/// A whole number in `range` (no sign, no fraction, no exponent).
pub fn parse_u32_in(
    flag: &'static str,
    raw: &str,
    range: &RangeInclusive<u32>,
) -> Result<u32, InvalidSetting> {
    let t = raw.trim();
    let n = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u32>().ok()
    } else {
        None
    };
    match n {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(InvalidSetting::new(flag, raw, range_text(range))),
    }
}

/// `default` (back to the filter's default) or a whole number in `range`.
pub fn parse_optional_u32_in(
    flag: &'static str,
    raw: &str,
    range: &RangeInclusive<u32>,
) -> Result<Option<u32>, InvalidSetting> {
    if raw.trim() == "default" {
        return Ok(None);
    }
    parse_u32_in(flag, raw, range).map(Some).map_err(|mut e| {
        e.expected = format!("{} or \"default\"", e.expected);
        e
    })
}

/// `default` or a percentage above 0 and at most 100 (`97.5`, `97.5%`).
pub fn parse_percent(flag: &'static str, raw: &str) -> Result<Option<f64>, InvalidSetting> {
    let t = raw.trim();
    if t == "default" {
        return Ok(None);
    }
    let number = t.strip_suffix('%').unwrap_or(t).trim();
    // Plain decimals only: Rust would also accept "inf", "NaN" and "1e2".
    let plain = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1;
    match number.parse::<f64>() {
        Ok(v) if plain && check_percent(flag, v).is_ok() => Ok(Some(v)),
        _ => Err(InvalidSetting::new(
            flag,
            raw,
            format!("{PERCENT_TEXT} or \"default\""),
        )),
    }
}

pub fn parse_primary(raw: &str) -> Result<Primary, InvalidSetting> {
    let t = raw.trim();
    if t.is_empty() {
        Err(InvalidSetting::new(
            "--primary",
            raw,
            "an account id or label in the pool, or \"none\"",
        ))
    } else if t == "none" {
        Ok(Primary::Clear)
    } else {
        Ok(Primary::Account(t.to_owned()))
    }
}

/// The routing flags as typed on the command line (each `None` when not given).
#[derive(Debug, Clone, Default)]
pub struct RawRoutingFlags<'a> {
    pub strategy: Option<&'a str>,
    pub max_attempts: Option<&'a str>,
    pub explain: Option<&'a str>,
    pub primary: Option<&'a str>,
    pub primary_threshold: Option<&'a str>,
    pub secondary_threshold: Option<&'a str>,
    pub circuit_failures: Option<&'a str>,
    pub circuit_open_ms: Option<&'a str>,
    pub cooldown_max_ms: Option<&'a str>,
    pub websockets: Option<&'a str>,
}

impl RawRoutingFlags<'_> {
    /// Parses and checks every given flag; the first bad one is the error.
    pub fn parse(&self) -> Result<RoutingPatch, InvalidSetting> {
        let patch = RoutingPatch {
            strategy: self.strategy.map(parse_strategy).transpose()?,
            max_attempts: self
                .max_attempts
                .map(|r| parse_u32_in("--max-attempts", r, &MAX_ATTEMPTS))
                .transpose()?,
            explain_routes: self
                .explain
                .map(|r| parse_bool("--explain", r))
                .transpose()?,
            primary: self.primary.map(parse_primary).transpose()?,
            primary_threshold_percent: self
                .primary_threshold
                .map(|r| parse_percent("--primary-threshold", r))
                .transpose()?,
            secondary_threshold_percent: self
                .secondary_threshold
                .map(|r| parse_percent("--secondary-threshold", r))
                .transpose()?,
            circuit_failures: self
                .circuit_failures
                .map(|r| parse_optional_u32_in("--circuit-failures", r, &(1..=u32::MAX)))
                .transpose()?,
            circuit_open_ms: self
                .circuit_open_ms
                .map(|r| {
                    parse_optional_u32_in("--circuit-open-ms", r, &(MIN_DURATION_MS..=u32::MAX))
                })
                .transpose()?,
            cooldown_max_ms: self
                .cooldown_max_ms
                .map(|r| {
                    parse_optional_u32_in("--cooldown-max-ms", r, &(MIN_DURATION_MS..=u32::MAX))
                })
                .transpose()?,
            websockets: self
                .websockets
                .map(|r| parse_on_off("--websockets", r))
                .transpose()?,
        };
        patch.validate()?;
        Ok(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &'static str)]) -> RawRoutingFlags<'static> {
        let mut f = RawRoutingFlags::default();
        for (name, v) in pairs {
            let slot = match *name {
                "strategy" => &mut f.strategy,
                "max_attempts" => &mut f.max_attempts,
                "explain" => &mut f.explain,
                "primary" => &mut f.primary,
                "primary_threshold" => &mut f.primary_threshold,
                "secondary_threshold" => &mut f.secondary_threshold,
                "circuit_failures" => &mut f.circuit_failures,
                "circuit_open_ms" => &mut f.circuit_open_ms,
                "cooldown_max_ms" => &mut f.cooldown_max_ms,
                "websockets" => &mut f.websockets,
                other => unreachable_flag(other),
            };
            *slot = Some(v);
        }
        f
    }

    fn unreachable_flag(name: &str) -> ! {
        panic!("no flag {name}")
    }

    #[test]
    fn defaults_are_the_filters() {
        let v = Routing::default().view();
        assert_eq!(v.strategy, Strategy::QuotaFirst);
        assert_eq!(v.max_attempts, defaults::MAX_ATTEMPTS);
        assert!(!v.explain_routes);
        assert_eq!(v.primary_account_id, None);
        assert_eq!(
            v.primary_threshold_percent,
            defaults::PRIMARY_THRESHOLD_PERCENT
        );
        assert_eq!(
            v.secondary_threshold_percent,
            defaults::SECONDARY_THRESHOLD_PERCENT
        );
        assert_eq!(v.circuit_failures, defaults::CIRCUIT_FAILURES);
        assert_eq!(v.circuit_open_ms, defaults::CIRCUIT_OPEN_MS);
        assert_eq!(v.cooldown_max_ms, defaults::COOLDOWN_MAX_MS);
        assert_eq!(*MAX_ATTEMPTS.end(), defaults::MAX_ATTEMPTS_CAP);
    }

    #[test]
    fn good_values_parse() -> Result<(), InvalidSetting> {
        let p = flags(&[
            ("strategy", "primary_first"),
            ("max_attempts", "10"),
            ("explain", "true"),
            ("primary", "acct-0"),
            ("primary_threshold", "97.5"),
            ("secondary_threshold", "100%"),
            ("circuit_failures", "1"),
            ("circuit_open_ms", "1000"),
            ("cooldown_max_ms", "default"),
        ])
        .parse()?;
        assert_eq!(p.strategy, Some(Strategy::PrimaryFirst));
        assert_eq!(p.max_attempts, Some(10));
        assert_eq!(p.explain_routes, Some(true));
        assert_eq!(p.primary, Some(Primary::Account("acct-0".into())));
        assert_eq!(p.primary_threshold_percent, Some(Some(97.5)));
        assert_eq!(p.secondary_threshold_percent, Some(Some(100.0)));
        assert_eq!(p.circuit_failures, Some(Some(1)));
        assert_eq!(p.circuit_open_ms, Some(Some(1000)));
        assert_eq!(p.cooldown_max_ms, Some(None));
        assert_eq!(
            flags(&[("primary", "none")]).parse()?.primary,
            Some(Primary::Clear)
        );
        assert!(flags(&[]).parse()?.is_empty());
        Ok(())
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&str, &'static str, &str)] = &[
            ("strategy", "fastest", "--strategy"),
            ("strategy", "", "--strategy"),
            ("max_attempts", "0", "--max-attempts"),
            ("max_attempts", "11", "--max-attempts"),
            ("max_attempts", "-1", "--max-attempts"),
            ("max_attempts", "2.5", "--max-attempts"),
            ("max_attempts", "three", "--max-attempts"),
            ("explain", "yes", "--explain"),
            ("primary", " ", "--primary"),
            ("primary_threshold", "0", "--primary-threshold"),
            ("primary_threshold", "100.1", "--primary-threshold"),
            ("primary_threshold", "-5", "--primary-threshold"),
            ("primary_threshold", "NaN", "--primary-threshold"),
            ("primary_threshold", "inf", "--primary-threshold"),
            ("primary_threshold", "1e2", "--primary-threshold"),
            ("secondary_threshold", "abc", "--secondary-threshold"),
            ("circuit_failures", "0", "--circuit-failures"),
            ("circuit_failures", "99999999999", "--circuit-failures"),
            ("circuit_open_ms", "999", "--circuit-open-ms"),
            ("cooldown_max_ms", "10s", "--cooldown-max-ms"),
        ];
        for (name, value, flag) in cases {
            let err = flags(&[(name, value)]).parse();
            match err {
                Err(e) => {
                    assert_eq!(e.flag, *flag, "{name}={value:?}");
                    assert!(
                        e.to_string().starts_with(&format!("invalid {flag} ")),
                        "{e}"
                    );
                }
                Ok(p) => unreachable_flag(&format!("{name}={value:?} was accepted: {p:?}")),
            }
        }
    }

    #[test]
    fn apply_changes_only_what_is_given() {
        let base = Routing {
            primary_account_id: Some("acc_1".into()),
            circuit_failures: Some(5),
            ..Routing::default()
        };
        let patch = RoutingPatch {
            strategy: Some(Strategy::RoundRobin),
            circuit_failures: Some(None),
            ..RoutingPatch::default()
        };
        let after = base.apply(&patch, None);
        assert_eq!(after.strategy, Strategy::RoundRobin);
        assert_eq!(after.primary_account_id.as_deref(), Some("acc_1"));
        assert_eq!(after.circuit_failures, None);
        assert_eq!(after.max_attempts, 3);
        let cleared = base.apply(&RoutingPatch::default(), Some(None));
        assert_eq!(cleared.primary_account_id, None);
        assert_eq!(base.apply(&RoutingPatch::default(), None), base);
    }

    #[test]
    fn serializes_as_the_effective_view() -> Result<(), serde_json::Error> {
        let v = serde_json::to_value(Routing::default())?;
        assert_eq!(
            v,
            serde_json::json!({
                "strategy": "quota_first", "max_attempts": 3, "explain_routes": false,
                "primary_account_id": null, "primary_threshold_percent": 95.0,
                "secondary_threshold_percent": 99.0, "circuit_failures": 3,
                "circuit_open_ms": 60000, "cooldown_max_ms": 1800000, "websockets": true
            })
        );
        Ok(())
    }

    #[test]
    fn websockets_turn_off_and_on() -> Result<(), InvalidSetting> {
        let off = flags(&[("websockets", "off")]).parse()?;
        assert_eq!(off.websockets, Some(false));
        assert_eq!(off.flags(), vec!["--websockets"]);
        assert!(!Routing::default().apply(&off, None).websockets);
        let on = flags(&[("websockets", "on")]).parse()?;
        assert_eq!(on.websockets, Some(true));
        let err = flags(&[("websockets", "maybe")]).parse();
        assert!(err.is_err_and(|e| e.flag == "--websockets"));
        Ok(())
    }
}
