//! Declarative configuration (`codexmesh apply`, `PUT /api/v1/config`): the documents, how they
//! are read from YAML (or JSON) text with the position of every field, how they are checked on
//! their own, and how they are written back (`codexmesh get … -o yaml`). What a set of documents
//! changes in a store is planned in [`crate::declarative_plan`].
//!
//! Rules this module keeps:
//! - field names are snake_case, like every JSON the admin API speaks (`max_attempts`,
//!   `api_version`); camelCase spellings are unknown fields. Every document type refuses unknown
//!   fields;
//! - every error names the file, the line and column, and the field path
//!   (`team.yaml:7:5: spec.routing.max_attemps: unknown field …`): the YAML is read event by
//!   event, recording where each path starts, so a semantic error found later (an unknown
//!   account, a value out of range) points at its line too;
//! - anchors, aliases and tags are refused (nothing here needs them, and an alias can make a
//!   small text a huge tree); nesting is bounded;
//! - what is written back is exactly what is read: `get -o yaml` then `apply` changes nothing.
//!
//! A file holds any number of documents separated by `---`; a document that is a sequence holds
//! several (so a JSON array of documents reads too).

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::{Yaml, YamlEmitter};

use crate::ids;
use crate::network::CidrList;
use crate::operators::{validate_operator_name, Role};
use crate::routing::{self, InvalidSetting, Routing, RoutingPatch, Strategy};

/// The one version of the format.
pub const API_VERSION: &str = "codexmesh.dev/v1";
/// Deeper nesting than any document has is refused (a guard, not a format rule).
const MAX_DEPTH: usize = 32;

/// What kind of document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A pool: its routing, account memberships and keys.
    Pool,
    /// An existing operator's role and pool assignment.
    Operator,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pool => "Pool",
            Kind::Operator => "Operator",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "Pool" => Some(Kind::Pool),
            "Operator" => Some(Kind::Operator),
            _ => None,
        }
    }
}

/// What kind of problem a [`ConfigError`] is (a surface maps it to a status or exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigErrorKind {
    /// Malformed YAML, an unknown field, a bad value, an unknown account or operator.
    Invalid,
    /// The principal may not make this change (creating pools, operator documents).
    Forbidden,
    /// Fine on its own, refused by the stored state (the last owner, an ambiguous key label).
    Conflict,
}

/// A problem in a document: where (file, line, column, field path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub kind: ConfigErrorKind,
    /// The file name (`-` for standard input, `body` for an API request).
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// The field path (`spec.accounts[1].weight`); empty for a syntax error.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where a document came from, and where each of its field paths starts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    pub file: String,
    /// 1-based line and column of the document's first field.
    pub line: usize,
    pub column: usize,
    /// Path → (line, column), paths relative to the document.
    positions: BTreeMap<String, (usize, usize)>,
}

impl Origin {
    /// An origin with no positions (documents built in code, e.g. by `get`).
    pub fn synthetic(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            line: 1,
            column: 1,
            positions: BTreeMap::new(),
        }
    }

    /// Where `path` starts: the path itself, else its nearest recorded parent, else the
    /// document's start.
    pub fn position(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return (self.line, self.column),
            }
        }
    }

    /// An error of `kind` at `path` of this document.
    pub fn error(
        &self,
        kind: ConfigErrorKind,
        path: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(path);
        ConfigError {
            kind,
            file: self.file.clone(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        }
    }

    pub fn invalid(&self, path: &str, message: impl Into<String>) -> ConfigError {
        self.error(ConfigErrorKind::Invalid, path, message)
    }
}

// ---- the documents ----

/// One document: a pool or an operator, by name, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub origin: Origin,
    pub name: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Pool(PoolSpec),
    Operator(OperatorSpec),
}

impl Document {
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Pool(_) => Kind::Pool,
            Body::Operator(_) => Kind::Operator,
        }
    }
}

/// The envelope every document has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

/// `kind: Pool`. Absent settings are the defaults; absent lists are empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default, skip_serializing_if = "RoutingDoc::is_empty")]
    pub routing: RoutingDoc,
    /// Memberships of accounts already imported (accounts hold secrets: they come in through
    /// `account import` or the API, never through a document).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<MembershipDoc>,
    /// The pool's keys, each named by its label within the pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyDoc>,
    /// Per-pool network settings: `allowed_cidrs`, the client addresses the pool's keys work
    /// from (absent or empty: any address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkDoc>,
}

/// `spec.network` (see [`PoolSpec::network`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDoc {
    /// Client addresses allowed to use the pool's keys (CIDRs).
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
}

/// Routing settings as a document states them: every setting the model has, absent = the
/// default (a pool created without them, or `pool set-routing --X default`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explain_routes: Option<bool>,
    /// primary_first's owner: an account (id or label) that is a member of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_threshold_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_threshold_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_open_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_max_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websockets: Option<bool>,
}

/// An account's membership in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipDoc {
    /// The account's id or label (a label must name one account).
    pub account: String,
    /// Lower goes first (priority_order, primary_first); default 0.
    #[serde(default)]
    pub priority: u32,
    /// Its share (round robin, session spreading), 1–1000; default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The account's egress proxy (`http://HOST:PORT`, or `none` for direct; an account
    /// property, not the membership's); absent: left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// A key of the pool, named by its label.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyDoc {
    pub label: String,
    /// An operator key (route explanations, …); default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator: bool,
    /// `inherit` (the default: the pool's routing) or the key's own settings.
    #[serde(default, skip_serializing_if = "KeyRoutingDoc::is_inherit")]
    pub routing: KeyRoutingDoc,
    /// The key's limits (absent: none), as the API spells them.
    #[serde(default, skip_serializing_if = "crate::policy::KeyPolicy::is_empty")]
    pub policy: crate::policy::KeyPolicy,
}

/// A key's routing: `inherit`, or its own settings (a mapping like the pool's).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum KeyRoutingDoc {
    #[default]
    Inherit,
    Custom(RoutingDoc),
}

impl KeyRoutingDoc {
    pub fn is_inherit(&self) -> bool {
        matches!(self, KeyRoutingDoc::Inherit)
    }
}

impl Serialize for KeyRoutingDoc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeyRoutingDoc::Inherit => s.serialize_str("inherit"),
            KeyRoutingDoc::Custom(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for KeyRoutingDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyRoutingDoc;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"inherit\" or a mapping of routing settings")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "inherit" {
                    Ok(KeyRoutingDoc::Inherit)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RoutingDoc::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(KeyRoutingDoc::Custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `kind: Operator`: an existing operator (made by `operator create`) and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    pub role: Role,
    /// Pool names (owners see every pool and take none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<String>,
}

impl RoutingDoc {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The settings the document states (absent = default). `primary_account_id` is the owner
    /// account already resolved from [`RoutingDoc::primary_account`].
    pub fn to_routing(&self, primary_account_id: Option<String>) -> Routing {
        let mut r = Routing::default();
        if let Some(s) = self.strategy {
            r.strategy = s;
        }
        if let Some(n) = self.max_attempts {
            r.max_attempts = n;
        }
        if let Some(b) = self.explain_routes {
            r.explain_routes = b;
        }
        r.primary_account_id = primary_account_id;
        r.primary_threshold_percent = self.primary_threshold_percent;
        r.secondary_threshold_percent = self.secondary_threshold_percent;
        r.circuit_failures = self.circuit_failures;
        r.circuit_open_ms = self.circuit_open_ms;
        r.cooldown_max_ms = self.cooldown_max_ms;
        if let Some(b) = self.websockets {
            r.websockets = b;
        }
        r
    }

    /// The document stating `r` exactly (`primary` names its owner account as a document
    /// would: by label, or by id when the label is not unique).
    pub fn from_routing(r: &Routing, primary: Option<String>) -> Self {
        Self {
            strategy: Some(r.strategy),
            max_attempts: Some(r.max_attempts),
            explain_routes: Some(r.explain_routes),
            primary_account: primary,
            primary_threshold_percent: r.primary_threshold_percent,
            secondary_threshold_percent: r.secondary_threshold_percent,
            circuit_failures: r.circuit_failures,
            circuit_open_ms: r.circuit_open_ms,
            cooldown_max_ms: r.cooldown_max_ms,
            websockets: Some(r.websockets),
        }
    }

    /// Range checks, by the model's own rules ([`RoutingPatch::validate`]); the error names the
    /// document field (relative to the routing mapping).
    fn check(&self) -> Result<(), (&'static str, String)> {
        let patch = RoutingPatch {
            strategy: self.strategy,
            max_attempts: self.max_attempts,
            explain_routes: self.explain_routes,
            primary: self.primary_account.clone().map(routing::Primary::Account),
            primary_threshold_percent: self.primary_threshold_percent.map(Some),
            secondary_threshold_percent: self.secondary_threshold_percent.map(Some),
            circuit_failures: self.circuit_failures.map(Some),
            circuit_open_ms: self.circuit_open_ms.map(Some),
            cooldown_max_ms: self.cooldown_max_ms.map(Some),
            websockets: self.websockets,
        };
        patch.validate().map_err(|e| setting_error(&e))
    }
}

/// A model setting error as a document field and a message.
fn setting_error(e: &InvalidSetting) -> (&'static str, String) {
    let field = match e.flag {
        "--strategy" => "strategy",
        "--max-attempts" => "max_attempts",
        "--explain" => "explain_routes",
        "--primary" => "primary_account",
        "--primary-threshold" => "primary_threshold_percent",
        "--secondary-threshold" => "secondary_threshold_percent",
        "--circuit-failures" => "circuit_failures",
        "--circuit-open-ms" => "circuit_open_ms",
        "--cooldown-max-ms" => "cooldown_max_ms",
        "--websockets" => "websockets",
        "--weight" => "weight",
        _ => "",
    };
    (
        field,
        format!("invalid value {:?}: expected {}", e.value, e.expected),
    )
}

fn join(base: &str, field: &str) -> String {
    match (base.is_empty(), field.is_empty()) {
        (true, _) => field.to_owned(),
        (_, true) => base.to_owned(),
        _ if field.starts_with('[') => format!("{base}{field}"),
        _ => format!("{base}.{field}"),
    }
}

// ---- reading ----

/// Reads every document of one file (`file` names it in errors).
pub fn read(file: &str, text: &str) -> Result<Vec<Document>, ConfigError> {
    let mut docs = Vec::new();
    for (value, origin) in YamlReader::new(file, text).documents()? {
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let prefix = format!("[{i}]");
                    let origin = origin.nested(&prefix);
                    docs.push(document(item, origin)?);
                }
            }
            other => docs.push(document(other, origin)?),
        }
    }
    Ok(docs)
}

/// Reads every file, then checks the documents together (a pool or operator named twice).
pub fn read_all<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Document>, ConfigError> {
    let mut docs = Vec::new();
    for (file, text) in files {
        docs.extend(read(file, text)?);
    }
    let mut seen = BTreeSet::new();
    for d in &docs {
        if !seen.insert((d.kind(), d.name.as_str())) {
            return Err(d.origin.invalid(
                "metadata.name",
                format!(
                    "{} {:?} is named by another document too (one document per {})",
                    d.kind().as_str(),
                    d.name,
                    d.kind().as_str()
                ),
            ));
        }
    }
    Ok(docs)
}

impl Origin {
    /// The origin of the document at `prefix` (`[2]`) inside this one.
    fn nested(&self, prefix: &str) -> Origin {
        let positions: BTreeMap<String, (usize, usize)> = self
            .positions
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(prefix)?;
                let rest = match rest.strip_prefix('.') {
                    Some(r) => r,
                    None if rest.is_empty() => rest,
                    // `[10].kind` under prefix `[1]`: another document.
                    None => return None,
                };
                Some((rest.to_owned(), *v))
            })
            .collect();
        let (line, column) = self.position(prefix);
        Origin {
            file: self.file.clone(),
            line,
            column,
            positions,
        }
    }
}

/// Deserializes `value` naming the path of the field at fault (relative to `base`).
fn typed<T: DeserializeOwned>(value: Value, base: &str, origin: &Origin) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let path = if path == "." { String::new() } else { path };
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name);
        // serde names an unknown field in its message; the path may or may not end with it.
        let path = match unknown {
            Some(name) if !path.ends_with(name) => join(&path, name),
            _ => path,
        };
        origin.invalid(&join(base, &path), message)
    })
}

fn document(value: Value, origin: Origin) -> Result<Document, ConfigError> {
    if !value.is_object() {
        return Err(origin.invalid(
            "",
            "a document is a mapping with api_version, kind, metadata and spec",
        ));
    }
    let env: Envelope = typed(value, "", &origin)?;
    if env.api_version != API_VERSION {
        return Err(origin.invalid(
            "api_version",
            format!(
                "unknown api_version {:?}: expected {API_VERSION}",
                env.api_version
            ),
        ));
    }
    let Some(kind) = Kind::parse(&env.kind) else {
        return Err(origin.invalid(
            "kind",
            format!("unknown kind {:?}: expected Pool or Operator", env.kind),
        ));
    };
    let spec = if env.spec.is_null() {
        Value::Object(Map::new())
    } else {
        env.spec
    };
    let body = match kind {
        Kind::Pool => Body::Pool(typed(spec, "spec", &origin)?),
        Kind::Operator => Body::Operator(typed(spec, "spec", &origin)?),
    };
    let doc = Document {
        origin,
        name: env.metadata.name,
        body,
    };
    check_document(&doc)?;
    Ok(doc)
}

/// What a document must be on its own: names and labels well formed, values in range, nothing
/// named twice.
pub fn check_document(doc: &Document) -> Result<(), ConfigError> {
    let o = &doc.origin;
    match &doc.body {
        Body::Pool(spec) => {
            ids::validate_pool_name(&doc.name)
                .map_err(|e| o.invalid("metadata.name", e.message))?;
            spec.routing
                .check()
                .map_err(|(f, m)| o.invalid(&join("spec.routing", f), m))?;
            let mut accounts = BTreeSet::new();
            for (i, m) in spec.accounts.iter().enumerate() {
                let at = format!("spec.accounts[{i}]");
                if m.account.trim().is_empty() {
                    return Err(o.invalid(&join(&at, "account"), "an account id or label"));
                }
                if !accounts.insert(m.account.as_str()) {
                    return Err(o.invalid(
                        &join(&at, "account"),
                        format!("account {:?} is listed twice", m.account),
                    ));
                }
                routing::check_weight(m.weight)
                    .map_err(|e| o.invalid(&join(&at, "weight"), setting_error(&e).1))?;
            }
            let mut labels = BTreeSet::new();
            for (i, k) in spec.keys.iter().enumerate() {
                let at = format!("spec.keys[{i}]");
                ids::validate_label(&k.label)
                    .map_err(|e| o.invalid(&join(&at, "label"), e.message))?;
                if !labels.insert(k.label.as_str()) {
                    return Err(o.invalid(
                        &join(&at, "label"),
                        format!("key {:?} is listed twice (a label names one key)", k.label),
                    ));
                }
                if let KeyRoutingDoc::Custom(r) = &k.routing {
                    r.check()
                        .map_err(|(f, m)| o.invalid(&join(&join(&at, "routing"), f), m))?;
                }
                k.policy.validate().map_err(|e| {
                    o.invalid(&format!("{at}.policy.{}", e.field), e.message.clone())
                })?;
            }
            if let Some(net) = &spec.network {
                CidrList::parse(&net.allowed_cidrs).map_err(|e| {
                    o.invalid(
                        &format!("spec.network.allowed_cidrs[{}]", e.index),
                        e.to_string(),
                    )
                })?;
            }
        }
        Body::Operator(spec) => {
            validate_operator_name(&doc.name).map_err(|e| o.invalid("metadata.name", e.message))?;
            let mut pools = BTreeSet::new();
            for (i, p) in spec.pools.iter().enumerate() {
                let at = format!("spec.pools[{i}]");
                ids::validate_pool_name(p).map_err(|e| o.invalid(&at, e.message))?;
                if !pools.insert(p.as_str()) {
                    return Err(o.invalid(&at, format!("pool {p:?} is listed twice")));
                }
            }
            if spec.role == Role::Owner && !spec.pools.is_empty() {
                return Err(o.invalid(
                    "spec.pools",
                    "owners see every pool: they take no assignment (leave pools out)",
                ));
            }
        }
    }
    Ok(())
}

/// Reads YAML events into JSON values, recording where each path starts.
struct YamlReader<'a> {
    file: &'a str,
    parser: Parser<std::str::Chars<'a>>,
}

impl<'a> YamlReader<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        Self {
            file,
            parser: Parser::new_from_str(text),
        }
    }

    fn error(&self, mark: Marker, message: impl Into<String>) -> ConfigError {
        ConfigError {
            kind: ConfigErrorKind::Invalid,
            file: self.file.to_owned(),
            line: mark.line(),
            column: mark.col() + 1,
            path: String::new(),
            message: message.into(),
        }
    }

    fn next(&mut self) -> Result<(Event, Marker), ConfigError> {
        self.parser.next_token().map_err(|e| ConfigError {
            kind: ConfigErrorKind::Invalid,
            file: self.file.to_owned(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
            path: String::new(),
            message: format!("not valid YAML: {}", e.info()),
        })
    }

    /// Every document of the stream, as a value and its origin.
    fn documents(mut self) -> Result<Vec<(Value, Origin)>, ConfigError> {
        let mut out = Vec::new();
        loop {
            let (ev, mark) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(out),
                Event::DocumentStart => {
                    let (ev, mark) = self.next()?;
                    let mut origin = Origin {
                        file: self.file.to_owned(),
                        line: mark.line(),
                        column: mark.col() + 1,
                        positions: BTreeMap::new(),
                    };
                    let value = self.node(ev, mark, "", &mut origin.positions, 0)?;
                    // A block mapping's start mark is past its first key: use the first field.
                    if let Some(first) = origin.positions.values().min() {
                        (origin.line, origin.column) = *first;
                    }
                    out.push((value, origin));
                }
                _ => return Err(self.error(mark, "expected a document")),
            }
        }
    }

    fn node(
        &mut self,
        ev: Event,
        mark: Marker,
        path: &str,
        positions: &mut BTreeMap<String, (usize, usize)>,
        depth: usize,
    ) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(self.error(mark, "nested too deeply"));
        }
        let at = |e: ConfigError| ConfigError {
            path: path.to_owned(),
            ..e
        };
        match ev {
            Event::Alias(_) => Err(at(self.error(mark, "aliases (*name) are not supported"))),
            Event::Scalar(_, _, _, Some(_))
            | Event::SequenceStart(_, Some(_))
            | Event::MappingStart(_, Some(_)) => {
                Err(at(self.error(mark, "tags (!tag) are not supported")))
            }
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                Err(at(self.error(mark, "anchors (&name) are not supported")))
            }
            Event::Scalar(text, style, _, _) => {
                if style != TScalarStyle::Plain {
                    return Ok(Value::String(text));
                }
                match Yaml::from_str(&text) {
                    Yaml::Null => Ok(Value::Null),
                    Yaml::Boolean(b) => Ok(Value::Bool(b)),
                    Yaml::Integer(i) => Ok(Value::Number(i.into())),
                    Yaml::Real(r) => r
                        .parse::<f64>()
                        .ok()
                        .and_then(Number::from_f64)
                        .map(Value::Number)
                        .ok_or_else(|| at(self.error(mark, format!("{r} is not a finite number")))),
                    _ => Ok(Value::String(text)),
                }
            }
            Event::SequenceStart(..) => {
                let mut items = Vec::new();
                loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::SequenceEnd {
                        return Ok(Value::Array(items));
                    }
                    let p = format!("{path}[{}]", items.len());
                    positions.insert(p.clone(), (m.line(), m.col() + 1));
                    items.push(self.node(ev, m, &p, positions, depth + 1)?);
                }
            }
            Event::MappingStart(..) => {
                let mut map = Map::new();
                loop {
                    let (ev, m) = self.next()?;
                    let key = match ev {
                        Event::MappingEnd => return Ok(Value::Object(map)),
                        Event::Scalar(text, _, 0, None) => text,
                        _ => return Err(at(self.error(m, "a key must be plain text"))),
                    };
                    let p = join(path, &key);
                    if map.contains_key(&key) {
                        return Err(ConfigError {
                            path: p,
                            ..self.error(m, format!("{key} is given twice"))
                        });
                    }
                    positions.insert(p.clone(), (m.line(), m.col() + 1));
                    let (ev, vm) = self.next()?;
                    let value = self.node(ev, vm, &p, positions, depth + 1)?;
                    map.insert(key, value);
                }
            }
            _ => Err(at(self.error(mark, "expected a value"))),
        }
    }
}

// ---- writing ----

/// A document as the JSON value `apply` reads.
pub fn to_value(doc: &Document) -> Value {
    let spec = match &doc.body {
        Body::Pool(s) => serde_json::to_value(s),
        Body::Operator(s) => serde_json::to_value(s),
    }
    .unwrap_or(Value::Null);
    serde_json::json!({
        "api_version": API_VERSION,
        "kind": doc.kind().as_str(),
        "metadata": {"name": doc.name},
        "spec": spec,
    })
}

/// Documents as YAML, `---` before each, fields in the order this module declares them.
pub fn to_yaml(docs: &[Document]) -> String {
    let mut out = String::new();
    for d in docs {
        let mut text = String::new();
        // Writing into a String does not fail; an error would only leave the text short.
        let _ = YamlEmitter::new(&mut text).dump(&yaml_of(&to_value(d)));
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// Where a field goes in written YAML (lower first); unknown names last, by name.
fn field_rank(name: &str) -> usize {
    // Names of different mappings never meet, so one list orders them all: a key's label
    // before its routing, the pool's routing before its accounts and keys.
    const ORDER: &[&str] = &[
        "api_version",
        "kind",
        "metadata",
        "name",
        "spec",
        "role",
        "pools",
        "account",
        "priority",
        "weight",
        "label",
        "operator",
        "routing",
        "strategy",
        "max_attempts",
        "explain_routes",
        "primary_account",
        "primary_threshold_percent",
        "secondary_threshold_percent",
        "circuit_failures",
        "circuit_open_ms",
        "cooldown_max_ms",
        "websockets",
        "accounts",
        "keys",
        "network",
        "allowed_cidrs",
        "policy",
        "allowed_models",
        "requests_per_minute",
        "max_concurrent_requests",
        "tokens_per_day",
        "tokens_per_week",
        "primary_share_percent",
        "secondary_share_percent",
    ];
    ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len())
}

fn yaml_of(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Yaml::Integer(i),
            // A whole percentage reads back the same as `90`.
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => Yaml::Integer(f as i64),
            _ => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(yaml_of).collect()),
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            fields.sort_by(|a, b| (field_rank(a.0), a.0).cmp(&(field_rank(b.0), b.0)));
            Yaml::Hash(
                fields
                    .into_iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), yaml_of(v)))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
api_version: codexmesh.dev/v1
kind: Pool
metadata: {name: team-a}
spec:
  routing:
    strategy: priority_order
    max_attempts: 2
    primary_threshold_percent: 90
  accounts:
    - {account: alice@example.com, priority: 1}
    - account: bob
      weight: 5
  keys:
    - label: ci
    - label: ops
      operator: true
      routing: {strategy: round_robin}
    - {label: inherit-me, routing: inherit}
---
api_version: codexmesh.dev/v1
kind: Operator
metadata:
  name: bob
spec:
  role: admin
  pools: [team-a]
";

    fn err(text: &str) -> ConfigError {
        match read_all([("f.yaml", text)]) {
            Err(e) => e,
            Ok(d) => unreachable_ok(&d),
        }
    }

    fn unreachable_ok(d: &[Document]) -> ! {
        panic!("accepted: {d:?}")
    }

    #[test]
    fn a_good_file_reads() -> Result<(), ConfigError> {
        let docs = read_all([("f.yaml", GOOD)])?;
        assert_eq!(docs.len(), 2);
        let Body::Pool(p) = &docs[0].body else {
            unreachable_ok(&docs)
        };
        assert_eq!(docs[0].name, "team-a");
        assert_eq!(p.routing.strategy, Some(Strategy::PriorityOrder));
        assert_eq!(p.routing.primary_threshold_percent, Some(90.0));
        assert_eq!(p.accounts[0].weight, 1);
        assert_eq!(p.accounts[1].weight, 5);
        assert_eq!(p.keys[0].routing, KeyRoutingDoc::Inherit);
        assert!(p.keys[1].operator);
        assert!(
            matches!(&p.keys[1].routing, KeyRoutingDoc::Custom(r) if r.strategy == Some(Strategy::RoundRobin))
        );
        assert_eq!(p.keys[2].routing, KeyRoutingDoc::Inherit);
        let Body::Operator(o) = &docs[1].body else {
            unreachable_ok(&docs)
        };
        assert_eq!(o.role, Role::Admin);
        assert_eq!(o.pools, vec!["team-a".to_owned()]);
        assert_eq!(docs[1].origin.line, 20);
        Ok(())
    }

    #[test]
    fn errors_name_file_line_column_and_field_path() {
        let cases: &[(&str, &str)] = &[
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  routing:\n    maxAttempts: 2\n",
                "f.yaml:6:5: spec.routing.maxAttempts: unknown field `maxAttempts`",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  routing: {max_attempts: 11}\n",
                "f.yaml:5:13: spec.routing.max_attempts: invalid value \"11\": expected a whole number from 1 to 10",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  routing: {strategy: fastest}\n",
                "f.yaml:5:13: spec.routing.strategy: \"fastest\" is not one of",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  accounts:\n    - {account: x}\n    - {account: y, weight: 0}\n",
                "f.yaml:7:20: spec.accounts[1].weight: invalid value \"0\"",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  keys:\n    - label: k\n      routing: {circuit_open_ms: 5}\n",
                "f.yaml:7:17: spec.keys[0].routing.circuit_open_ms: invalid value \"5\"",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  keys:\n    - label: k\n      routing: custom\n",
                "f.yaml:7:7: spec.keys[0].routing: invalid value: string \"custom\", expected \"inherit\"",
            ),
            (
                "api_version: codexmesh.dev/v2\nkind: Pool\nmetadata: {name: a}\n",
                "f.yaml:1:1: api_version: unknown api_version",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pol\nmetadata: {name: a}\n",
                "f.yaml:2:1: kind: unknown kind \"Pol\"",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a b}\n",
                "f.yaml:3:12: metadata.name: invalid pool name",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec: {keys: [{label: x}, {label: x}]}\n",
                "f.yaml:4:28: spec.keys[1].label: key \"x\" is listed twice",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\n---\napi_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\n",
                "f.yaml:7:12: metadata.name: Pool \"a\" is named by another document too",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Operator\nmetadata: {name: bob}\nspec: {role: owner, pools: [a]}\n",
                "f.yaml:4:21: spec.pools: owners see every pool",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Operator\nmetadata: {name: bob}\nspec: {role: boss}\n",
                "f.yaml:4:8: spec.role: \"boss\" is not one of owner, admin, viewer",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  routing: {}\n  routing: {}\n",
                "f.yaml:6:3: spec.routing: routing is given twice",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: &m {name: a}\n",
                "f.yaml:3:14: metadata: anchors (&name) are not supported",
            ),
            ("a: [1, 2\n", "f.yaml:2:1: not valid YAML"),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\n",
                "f.yaml:1:1: missing field `metadata`",
            ),
            (
                "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  network:\n    allowed_cidrs:\n      - 10.0.0.0/8\n      - 10.0.0.1/8\n",
                "f.yaml:8:9: spec.network.allowed_cidrs[1]: \"10.0.0.1/8\" has bits set after its prefix length",
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .map(|(text, want)| (err(text).to_string(), want))
            .filter(|(got, want)| !got.starts_with(*want))
            .map(|(got, want)| format!(" got: {got}\nwant: {want}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_json_array_of_documents_reads_and_errors_point_into_it() {
        let text = r#"[{"api_version": "codexmesh.dev/v1", "kind": "Pool", "metadata": {"name": "a"}},
 {"api_version": "codexmesh.dev/v1", "kind": "Pool", "metadata": {"name": "b"},
  "spec": {"routing": {"websockets": "off"}}}]"#;
        let e = err(text);
        assert_eq!(e.path, "spec.routing.websockets");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("expected a boolean"), "{e}");
        let ok = text.replace("\"off\"", "false");
        let docs = read_all([("body", ok.as_str())]).unwrap_or_default();
        assert_eq!(docs.len(), 2);
    }

    #[test]
    fn written_yaml_reads_back_as_the_same_documents() -> Result<(), ConfigError> {
        let mut docs = read_all([("f.yaml", GOOD)])?;
        if let Body::Pool(p) = &mut docs[0].body {
            // Labels that YAML would read as something else unless quoted.
            p.keys.push(KeyDoc {
                label: "123".into(),
                operator: false,
                routing: KeyRoutingDoc::Inherit,
                policy: Default::default(),
            });
            p.keys.push(KeyDoc {
                label: "yes: # no".into(),
                operator: false,
                routing: KeyRoutingDoc::Inherit,
                policy: Default::default(),
            });
            p.routing.secondary_threshold_percent = Some(97.5);
        }
        let text = to_yaml(&docs);
        let again = read_all([("out.yaml", text.as_str())])?;
        assert_eq!(again.len(), docs.len());
        for (a, b) in again.iter().zip(&docs) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.body, b.body, "{text}");
        }
        assert!(
            text.starts_with("---\napi_version: codexmesh.dev/v1\nkind: Pool\n"),
            "{text}"
        );
        Ok(())
    }
}
