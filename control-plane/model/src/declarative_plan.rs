//! What applying documents ([`crate::declarative`]) to a store's state changes: the plan (the
//! steps the store runs, in order, in one transaction), the diff people read, and the other way
//! round, the documents that state the store as it is (`codexmesh get`).
//!
//! Rules this module keeps:
//! - pure: it reads a [`ConfigState`] (read by the store inside the apply's own transaction) and
//!   decides; it writes nothing, so a plan that fails halfway does not exist;
//! - the principal's [`Access`] is checked here for every object a plan touches, by the same
//!   rules as the imperative commands: a pool it does not see is treated as one nobody has (an
//!   admin naming another tenant's pool is refused as a pool creation, worded the same whether
//!   or not it exists); creating pools and operator documents need an owner;
//! - a document states its object whole: absent settings are the defaults. Lists of
//!   sub-objects (memberships, keys, an operator's pools) only grow without `prune`; with
//!   `prune`, what a named object's document no longer names goes (a membership is removed, a
//!   key revoked, an assignment dropped), and so do top-level objects of a kind the documents
//!   have but do not name (a pool is archived, an operator loses its pools). Prune never
//!   deletes an account or an operator, and keeps an account's last membership (removing it
//!   would delete the account) with a note;
//! - a revoked key is never brought back: a document naming its label makes a new key (new
//!   secret), and the diff says so;
//! - every error names the document's file, line and field path.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::declarative::{
    Body, ConfigError, ConfigErrorKind, Document, KeyDoc, KeyRoutingDoc, Kind, MembershipDoc,
    NetworkDoc, Origin, PoolSpec, RoutingDoc,
};
use crate::network::CidrList;
use crate::operators::{Access, Operator, Role};
use crate::policy::KeyPolicy;
use crate::records::{Account, KeyStatus, Pool, PoolKey};
use crate::routing::Routing;

/// What the store holds that documents speak about (all of it; the planner filters by access).
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    /// Every pool, archived ones too.
    pub pools: Vec<Pool>,
    /// Every account with every membership.
    pub accounts: Vec<Account>,
    /// Every key, revoked ones too, oldest first.
    pub keys: Vec<PoolKey>,
    pub operators: Vec<Operator>,
}

/// How to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Remove what the documents no longer name (see the module rules).
    pub prune: bool,
}

/// What happens to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Created,
    Changed,
    Unchanged,
    /// Removed by `--prune` (a pool archived, a key revoked, a membership or assignment gone).
    Pruned,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Changed => "changed",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
        }
    }
}

/// What kind of object a diff line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Pool,
    /// An account's membership in a pool (`pool/account`).
    Membership,
    /// A pool's key (`pool/label`).
    Key,
    Operator,
}

impl ObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Pool => "pool",
            ObjectKind::Membership => "membership",
            ObjectKind::Key => "key",
            ObjectKind::Operator => "operator",
        }
    }
}

/// One setting's change: `from` is None for a new object, `to` None for a removed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldChange {
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One object of the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ObjectChange {
    pub kind: ObjectKind,
    /// `team-a`, `team-a/alice@example.com`, `team-a/ci`, `bob`.
    pub name: String,
    pub action: Action,
    pub fields: Vec<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One write, as the store runs it (pools by name: a pool created earlier in the plan has no id
/// yet).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreatePool {
        name: String,
    },
    RestorePool {
        name: String,
    },
    SetPoolRouting {
        pool: String,
        from: Routing,
        to: Routing,
    },
    SetPoolNetwork {
        pool: String,
        from: CidrList,
        to: CidrList,
    },
    Join {
        pool: String,
        account_id: String,
        label: String,
        priority: u32,
        weight: u32,
    },
    SetMembership {
        pool: String,
        account_id: String,
        label: String,
        from: (u32, u32),
        to: (u32, u32),
    },
    /// The account's egress proxy (`None`: direct).
    SetEgressProxy {
        account_id: String,
        label: String,
        from: Option<String>,
        to: Option<String>,
    },
    CreateKey {
        pool: String,
        label: String,
        operator: bool,
        routing: Option<Routing>,
        /// None: no policy.
        policy: Option<KeyPolicy>,
    },
    SetKeyPolicy {
        key_id: String,
        pool: String,
        label: String,
        from: Option<KeyPolicy>,
        to: Option<KeyPolicy>,
    },
    SetKeyOperator {
        key_id: String,
        pool: String,
        label: String,
        operator: bool,
    },
    SetKeyRouting {
        key_id: String,
        pool: String,
        label: String,
        from: Option<Routing>,
        to: Option<Routing>,
    },
    Leave {
        pool: String,
        account_id: String,
        label: String,
    },
    RevokeKey {
        key_id: String,
        pool: String,
        label: String,
    },
    ArchivePool {
        name: String,
    },
    SetOperatorRole {
        operator_id: String,
        name: String,
        from: Role,
        to: Role,
    },
    SetOperatorPools {
        operator_id: String,
        name: String,
        from: Vec<String>,
        to: Vec<String>,
    },
}

impl Step {
    /// Whether the step changes what a snapshot carries (operators' do not).
    pub fn publishes(&self) -> bool {
        !matches!(
            self,
            Step::SetOperatorRole { .. } | Step::SetOperatorPools { .. }
        )
    }

    /// Where it runs: steps are grouped in this order (pools before what is in them, removals
    /// after additions, operators last).
    fn phase(&self) -> u8 {
        match self {
            Step::CreatePool { .. } | Step::RestorePool { .. } => 0,
            Step::SetPoolRouting { .. } | Step::SetPoolNetwork { .. } => 1,
            Step::Join { .. } | Step::SetMembership { .. } | Step::SetEgressProxy { .. } => 2,
            Step::CreateKey { .. }
            | Step::SetKeyOperator { .. }
            | Step::SetKeyRouting { .. }
            | Step::SetKeyPolicy { .. } => 3,
            Step::Leave { .. } | Step::RevokeKey { .. } => 4,
            Step::ArchivePool { .. } => 5,
            Step::SetOperatorRole { .. } => 6,
            Step::SetOperatorPools { .. } => 7,
        }
    }
}

/// What applying documents does: the diff and the steps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub objects: Vec<ObjectChange>,
    pub steps: Vec<Step>,
}

impl Plan {
    /// Nothing to write.
    pub fn is_noop(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether any step changes snapshot input (then the revision moves once).
    pub fn publishes(&self) -> bool {
        self.steps.iter().any(Step::publishes)
    }

    /// Objects per action, in [`Action`] order.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for o in &self.objects {
            *counts.entry(o.action.as_str()).or_insert(0) += 1;
        }
        counts
    }
}

// ---- planning ----

/// Plans `docs` against `state` for `access`. Any error: nothing is applied.
pub fn plan(
    docs: &[Document],
    state: &ConfigState,
    access: &Access,
    options: ApplyOptions,
) -> Result<Plan, ConfigError> {
    Planner::new(state, access, options).run(docs)
}

struct Planner<'a> {
    state: &'a ConfigState,
    access: &'a Access,
    options: ApplyOptions,
    /// Accounts the principal sees (any membership in a pool it sees).
    accounts: Vec<&'a Account>,
    plan: Plan,
}

fn forbidden(o: &Origin, path: &str, message: impl Into<String>) -> ConfigError {
    o.error(ConfigErrorKind::Forbidden, path, message)
}

/// Routing settings as `field: value` texts for diffs.
fn routing_fields(r: &Routing, label: &dyn Fn(&str) -> String) -> Vec<(&'static str, String)> {
    let or_default = |v: Option<String>| v.unwrap_or_else(|| "default".to_owned());
    vec![
        ("strategy", r.strategy.to_string()),
        ("max_attempts", r.max_attempts.to_string()),
        ("explain_routes", r.explain_routes.to_string()),
        (
            "primary_account",
            r.primary_account_id
                .as_deref()
                .map_or_else(|| "none".to_owned(), label),
        ),
        (
            "primary_threshold_percent",
            or_default(r.primary_threshold_percent.map(|v| v.to_string())),
        ),
        (
            "secondary_threshold_percent",
            or_default(r.secondary_threshold_percent.map(|v| v.to_string())),
        ),
        (
            "circuit_failures",
            or_default(r.circuit_failures.map(|v| v.to_string())),
        ),
        (
            "circuit_open_ms",
            or_default(r.circuit_open_ms.map(|v| v.to_string())),
        ),
        (
            "cooldown_max_ms",
            or_default(r.cooldown_max_ms.map(|v| v.to_string())),
        ),
        ("websockets", r.websockets.to_string()),
    ]
}

fn field(field: impl Into<String>, from: Option<String>, to: Option<String>) -> FieldChange {
    FieldChange {
        field: field.into(),
        from,
        to,
    }
}

impl<'a> Planner<'a> {
    fn new(state: &'a ConfigState, access: &'a Access, options: ApplyOptions) -> Self {
        let accounts = state
            .accounts
            .iter()
            .filter(|a| a.pools.iter().any(|m| access.sees_pool(&m.pool)))
            .collect();
        Self {
            state,
            access,
            options,
            accounts,
            plan: Plan::default(),
        }
    }

    fn label_of(&self, account_id: &str) -> String {
        self.state
            .accounts
            .iter()
            .find(|a| a.id == account_id)
            .map_or_else(|| account_id.to_owned(), |a| a.label.clone())
    }

    fn routing_diff(&self, prefix: &str, from: &Routing, to: &Routing) -> Vec<FieldChange> {
        let label = |id: &str| self.label_of(id);
        routing_fields(from, &label)
            .into_iter()
            .zip(routing_fields(to, &label))
            .filter(|(a, b)| a.1 != b.1)
            .map(|((name, a), (_, b))| field(format!("{prefix}{name}"), Some(a), Some(b)))
            .collect()
    }

    /// A visible pool by name.
    fn pool(&self, name: &str) -> Option<&'a Pool> {
        self.state
            .pools
            .iter()
            .find(|p| p.name == name && self.access.sees_pool(name))
    }

    /// The account a document names (id first, then label), among those the principal sees.
    fn account(&self, ident: &str) -> Result<&'a Account, String> {
        if let Some(a) = self.accounts.iter().find(|a| a.id == ident) {
            return Ok(a);
        }
        let found: Vec<&&Account> = self.accounts.iter().filter(|a| a.label == ident).collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no account with id or label {ident:?} (accounts come in through `codexmesh \
                 account import` or the API, then a document names them)"
            )),
            several => Err(format!(
                "several accounts are labelled {ident:?} ({}): use the id",
                several
                    .iter()
                    .map(|a| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn run(mut self, docs: &[Document]) -> Result<Plan, ConfigError> {
        let named_pools: BTreeSet<&str> = docs
            .iter()
            .filter(|d| d.kind() == Kind::Pool)
            .map(|d| d.name.as_str())
            .collect();
        for d in docs {
            match &d.body {
                Body::Pool(spec) => self.pool_doc(d, spec)?,
                Body::Operator(_) => {}
            }
        }
        if self.options.prune && !named_pools.is_empty() {
            self.prune_pools(&named_pools);
        }
        let operator_docs: Vec<&Document> =
            docs.iter().filter(|d| d.kind() == Kind::Operator).collect();
        if !operator_docs.is_empty() {
            self.operator_docs(&operator_docs, &named_pools)?;
        }
        self.plan.steps.sort_by_key(Step::phase);
        Ok(self.plan)
    }

    fn pool_doc(&mut self, d: &Document, spec: &PoolSpec) -> Result<(), ConfigError> {
        let o = &d.origin;
        let name = d.name.as_str();
        if !self.access.role.can_write() {
            return Err(forbidden(
                o,
                "metadata.name",
                format!("a {} may not change anything", self.access.role),
            ));
        }
        let existing = self.pool(name);
        let mut steps = Vec::new();
        let mut fields = Vec::new();
        let mut note = None;
        let current_cidrs = existing
            .map(|p| p.allowed_cidrs.clone())
            .unwrap_or_default();
        let current_routing = match existing {
            Some(p) => {
                if p.archived_at_ms.is_some() {
                    steps.push(Step::RestorePool { name: name.into() });
                    fields.push(field("archived", Some("true".into()), Some("false".into())));
                    note = Some("restored: the pool serves again".to_owned());
                }
                p.routing.clone()
            }
            None => {
                if !self.access.may_create_pool() {
                    return Err(forbidden(
                        o,
                        "metadata.name",
                        format!(
                            "no pool named {name:?} among yours, and only an owner may create \
                             pools"
                        ),
                    ));
                }
                steps.push(Step::CreatePool { name: name.into() });
                Routing::default()
            }
        };
        let pool_id = existing.map(|p| p.id.as_str());
        let current_members: Vec<(&Account, u32, u32)> = match pool_id {
            Some(id) => self
                .state
                .accounts
                .iter()
                .filter_map(|a| a.membership(id).map(|m| (a, m.priority, m.weight)))
                .collect(),
            None => Vec::new(),
        };

        // Memberships.
        let mut named: Vec<(&MembershipDoc, &Account)> = Vec::new();
        for (i, m) in spec.accounts.iter().enumerate() {
            let path = format!("spec.accounts[{i}].account");
            let account = self.account(&m.account).map_err(|e| o.invalid(&path, e))?;
            if named.iter().any(|(_, a)| a.id == account.id) {
                return Err(o.invalid(
                    &path,
                    format!(
                        "account {} is listed twice (as {:?})",
                        account.label, m.account
                    ),
                ));
            }
            named.push((m, account));
        }
        // Who is a member once this applies (the primary accounts must be among them).
        let mut members: Vec<&Account> = named.iter().map(|(_, a)| *a).collect();
        let mut member_objects = Vec::new();
        let mut member_steps = Vec::new();
        for (i, (m, account)) in named.iter().enumerate() {
            let object = format!("{name}/{}", account.label);
            if let Some(raw) = &m.egress_proxy {
                let path = format!("spec.accounts[{i}].egress_proxy");
                let to = if raw.trim().eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(crate::egress::parse_egress_proxy(raw).map_err(|e| o.invalid(&path, e))?)
                };
                if to != account.egress_proxy {
                    member_steps.push(Step::SetEgressProxy {
                        account_id: account.id.clone(),
                        label: account.label.clone(),
                        from: account.egress_proxy.clone(),
                        to: to.clone(),
                    });
                    member_objects.push(change(
                        ObjectKind::Membership,
                        object.clone(),
                        vec![field("egress_proxy", account.egress_proxy.clone(), to)],
                        Some("the account's, in every pool".to_owned()),
                    ));
                }
            }
            match current_members.iter().find(|(a, _, _)| a.id == account.id) {
                Some((_, priority, weight)) => {
                    let mut f = Vec::new();
                    if *priority != m.priority {
                        f.push(field(
                            "priority",
                            Some(priority.to_string()),
                            Some(m.priority.to_string()),
                        ));
                    }
                    if *weight != m.weight {
                        f.push(field(
                            "weight",
                            Some(weight.to_string()),
                            Some(m.weight.to_string()),
                        ));
                    }
                    if !f.is_empty() {
                        member_steps.push(Step::SetMembership {
                            pool: name.into(),
                            account_id: account.id.clone(),
                            label: account.label.clone(),
                            from: (*priority, *weight),
                            to: (m.priority, m.weight),
                        });
                    }
                    member_objects.push(change(ObjectKind::Membership, object, f, None));
                }
                None => {
                    member_steps.push(Step::Join {
                        pool: name.into(),
                        account_id: account.id.clone(),
                        label: account.label.clone(),
                        priority: m.priority,
                        weight: m.weight,
                    });
                    member_objects.push(ObjectChange {
                        kind: ObjectKind::Membership,
                        name: object,
                        action: Action::Created,
                        fields: vec![
                            field("priority", None, Some(m.priority.to_string())),
                            field("weight", None, Some(m.weight.to_string())),
                        ],
                        note: None,
                    });
                }
            }
        }
        for (account, _, _) in &current_members {
            if named.iter().any(|(_, a)| a.id == account.id) {
                continue;
            }
            let object = format!("{name}/{}", account.label);
            if !self.options.prune {
                members.push(account);
                continue;
            }
            if account.pools.len() <= 1 {
                members.push(account);
                member_objects.push(ObjectChange {
                    kind: ObjectKind::Membership,
                    name: object,
                    action: Action::Unchanged,
                    fields: Vec::new(),
                    note: Some(format!(
                        "kept: this is the only pool of account {}, and prune never deletes \
                         accounts (`codexmesh account remove` does)",
                        account.label
                    )),
                });
                continue;
            }
            member_steps.push(Step::Leave {
                pool: name.into(),
                account_id: account.id.clone(),
                label: account.label.clone(),
            });
            member_objects.push(ObjectChange {
                kind: ObjectKind::Membership,
                name: object,
                action: Action::Pruned,
                fields: Vec::new(),
                note: None,
            });
        }

        // The pool's routing.
        let primary = |r: &RoutingDoc, path: &str| -> Result<Option<String>, ConfigError> {
            let Some(ident) = &r.primary_account else {
                return Ok(None);
            };
            let by_id = members.iter().copied().find(|a| a.id == *ident);
            let by_label: Vec<&Account> = members
                .iter()
                .copied()
                .filter(|a| a.label == *ident)
                .collect();
            match (by_id, by_label.as_slice()) {
                (Some(a), _) | (None, &[a]) => Ok(Some(a.id.clone())),
                (None, []) => Err(o.invalid(
                    path,
                    format!("no account with id or label {ident:?} is a member of pool {name:?}"),
                )),
                (None, several) => Err(o.invalid(
                    path,
                    format!(
                        "several members of pool {name:?} are labelled {ident:?} ({}): use the id",
                        several
                            .iter()
                            .map(|a| a.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        };
        let target = spec
            .routing
            .to_routing(primary(&spec.routing, "spec.routing.primary_account")?);
        if target != current_routing {
            fields.extend(self.routing_diff("routing.", &current_routing, &target));
            steps.push(Step::SetPoolRouting {
                pool: name.into(),
                from: current_routing,
                to: target,
            });
        }

        // The pool's network (absent = any client address). Checked by `check_document`.
        let target_cidrs = match &spec.network {
            Some(net) => CidrList::parse(&net.allowed_cidrs).map_err(|e| {
                o.invalid(
                    &format!("spec.network.allowed_cidrs[{}]", e.index),
                    e.to_string(),
                )
            })?,
            None => CidrList::default(),
        };
        if target_cidrs != current_cidrs {
            let show = |c: &CidrList| format!("[{}]", c.to_strings().join(", "));
            fields.push(field(
                "network.allowed_cidrs",
                Some(show(&current_cidrs)),
                Some(show(&target_cidrs)),
            ));
            steps.push(Step::SetPoolNetwork {
                pool: name.into(),
                from: current_cidrs,
                to: target_cidrs,
            });
        }

        // Keys.
        let active: Vec<&PoolKey> = match pool_id {
            Some(id) => self
                .state
                .keys
                .iter()
                .filter(|k| k.pool_id == id && k.status == KeyStatus::Active)
                .collect(),
            None => Vec::new(),
        };
        let mut key_objects = Vec::new();
        let mut key_steps = Vec::new();
        for (i, k) in spec.keys.iter().enumerate() {
            let at = format!("spec.keys[{i}]");
            let routing = match &k.routing {
                KeyRoutingDoc::Inherit => None,
                KeyRoutingDoc::Custom(r) => {
                    Some(r.to_routing(primary(r, &format!("{at}.routing.primary_account"))?))
                }
            };
            let object = format!("{name}/{}", k.label);
            let same: Vec<&&PoolKey> = active.iter().filter(|x| x.label == k.label).collect();
            match same.as_slice() {
                [] => {
                    let revoked = pool_id.is_some_and(|id| {
                        self.state.keys.iter().any(|x| {
                            x.pool_id == id && x.label == k.label && x.status == KeyStatus::Revoked
                        })
                    });
                    let mut f = vec![field("operator", None, Some(k.operator.to_string()))];
                    f.push(field(
                        "routing",
                        None,
                        Some(
                            if routing.is_some() {
                                "custom"
                            } else {
                                "inherit"
                            }
                            .into(),
                        ),
                    ));
                    if let Some(r) = &routing {
                        f.extend(self.routing_diff("routing.", &Routing::default(), r));
                    }
                    let policy = (!k.policy.is_empty()).then(|| k.policy.clone());
                    f.extend(policy_diff(None, policy.as_ref()));
                    key_steps.push(Step::CreateKey {
                        pool: name.into(),
                        label: k.label.clone(),
                        operator: k.operator,
                        routing: routing.clone(),
                        policy,
                    });
                    key_objects.push(ObjectChange {
                        kind: ObjectKind::Key,
                        name: object,
                        action: Action::Created,
                        fields: f,
                        note: revoked.then(|| {
                            "a revoked key with this label stays revoked: this is a new key \
                             with a new secret"
                                .to_owned()
                        }),
                    });
                }
                [key] => {
                    let (f, s) = self.key_update(name, key, k, routing);
                    key_steps.extend(s);
                    key_objects.push(change(ObjectKind::Key, object, f, None));
                }
                several => {
                    return Err(o.error(
                        ConfigErrorKind::Conflict,
                        &format!("{at}.label"),
                        format!(
                            "several active keys of pool {name:?} are labelled {:?} ({}): \
                             revoke all but one (`codexmesh key revoke ID`)",
                            k.label,
                            several
                                .iter()
                                .map(|x| x.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
            }
        }
        if self.options.prune {
            for key in &active {
                if spec.keys.iter().any(|k| k.label == key.label) {
                    continue;
                }
                key_steps.push(Step::RevokeKey {
                    key_id: key.id.clone(),
                    pool: name.into(),
                    label: key.label.clone(),
                });
                key_objects.push(ObjectChange {
                    kind: ObjectKind::Key,
                    name: format!("{name}/{}", key.label),
                    action: Action::Pruned,
                    fields: Vec::new(),
                    note: Some("revoked".to_owned()),
                });
            }
        }

        let action = if existing.is_none() {
            Action::Created
        } else if steps.is_empty() {
            Action::Unchanged
        } else {
            Action::Changed
        };
        self.plan.objects.push(ObjectChange {
            kind: ObjectKind::Pool,
            name: name.into(),
            action,
            fields,
            note,
        });
        self.plan.objects.extend(member_objects);
        self.plan.objects.extend(key_objects);
        self.plan.steps.extend(steps);
        self.plan.steps.extend(member_steps);
        self.plan.steps.extend(key_steps);
        Ok(())
    }

    fn key_update(
        &self,
        pool: &str,
        key: &PoolKey,
        doc: &KeyDoc,
        routing: Option<Routing>,
    ) -> (Vec<FieldChange>, Vec<Step>) {
        let mut fields = Vec::new();
        let mut steps = Vec::new();
        if key.operator != doc.operator {
            fields.push(field(
                "operator",
                Some(key.operator.to_string()),
                Some(doc.operator.to_string()),
            ));
            steps.push(Step::SetKeyOperator {
                key_id: key.id.clone(),
                pool: pool.into(),
                label: key.label.clone(),
                operator: doc.operator,
            });
        }
        if key.routing_override != routing {
            match (&key.routing_override, &routing) {
                (Some(a), Some(b)) => fields.extend(self.routing_diff("routing.", a, b)),
                (a, b) => {
                    let mode = |r: &Option<Routing>| {
                        if r.is_some() { "custom" } else { "inherit" }.to_owned()
                    };
                    fields.push(field("routing", Some(mode(a)), Some(mode(b))));
                    if let Some(b) = b {
                        fields.extend(self.routing_diff("routing.", &Routing::default(), b));
                    }
                }
            }
            steps.push(Step::SetKeyRouting {
                key_id: key.id.clone(),
                pool: pool.into(),
                label: key.label.clone(),
                from: key.routing_override.clone(),
                to: routing,
            });
        }
        let policy = (!doc.policy.is_empty()).then(|| doc.policy.clone());
        if key.policy != policy {
            fields.extend(policy_diff(key.policy.as_ref(), policy.as_ref()));
            steps.push(Step::SetKeyPolicy {
                key_id: key.id.clone(),
                pool: pool.into(),
                label: key.label.clone(),
                from: key.policy.clone(),
                to: policy,
            });
        }
        (fields, steps)
    }

    /// Archives the pools the principal may change that no document names.
    fn prune_pools(&mut self, named: &BTreeSet<&str>) {
        for p in &self.state.pools {
            if p.archived_at_ms.is_some()
                || named.contains(p.name.as_str())
                || !self.access.may_change_pool(&p.name)
            {
                continue;
            }
            self.plan.steps.push(Step::ArchivePool {
                name: p.name.clone(),
            });
            self.plan.objects.push(ObjectChange {
                kind: ObjectKind::Pool,
                name: p.name.clone(),
                action: Action::Pruned,
                fields: vec![field("archived", Some("false".into()), Some("true".into()))],
                note: Some("archived; `codexmesh pool restore` brings it back".to_owned()),
            });
        }
    }

    fn operator_docs(
        &mut self,
        docs: &[&Document],
        named_pools: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        let mut roles: BTreeMap<&str, Role> = BTreeMap::new();
        for d in docs {
            let Body::Operator(spec) = &d.body else {
                continue;
            };
            let o = &d.origin;
            if !self.access.role.sees_all_pools() {
                return Err(forbidden(
                    o,
                    "metadata.name",
                    "only an owner may apply operator documents (roles and pool assignments)",
                ));
            }
            let Some(op) = self
                .state
                .operators
                .iter()
                .find(|x| x.name == d.name || x.id == d.name)
            else {
                return Err(o.invalid(
                    "metadata.name",
                    format!(
                        "no operator named {:?} (create it with `codexmesh operator create`; \
                         apply assigns roles and pools)",
                        d.name
                    ),
                ));
            };
            for (i, p) in spec.pools.iter().enumerate() {
                if !named_pools.contains(p.as_str())
                    && !self.state.pools.iter().any(|x| x.name == *p)
                {
                    return Err(
                        o.invalid(&format!("spec.pools[{i}]"), format!("no pool named {p:?}"))
                    );
                }
            }
            roles.insert(op.id.as_str(), spec.role);
            let mut fields = Vec::new();
            if op.role != spec.role {
                fields.push(field(
                    "role",
                    Some(op.role.to_string()),
                    Some(spec.role.to_string()),
                ));
                self.plan.steps.push(Step::SetOperatorRole {
                    operator_id: op.id.clone(),
                    name: op.name.clone(),
                    from: op.role,
                    to: spec.role,
                });
            }
            // Owners' pool rows go with the role (the store drops them).
            let current: Vec<String> = if op.role == Role::Owner {
                Vec::new()
            } else {
                op.pools.clone()
            };
            let mut target: BTreeSet<String> = spec.pools.iter().cloned().collect();
            if !self.options.prune && spec.role != Role::Owner {
                target.extend(current.iter().cloned());
            }
            let target: Vec<String> = target.into_iter().collect();
            if spec.role != Role::Owner && target != current {
                fields.push(field(
                    "pools",
                    Some(pools_text(&current)),
                    Some(pools_text(&target)),
                ));
                self.plan.steps.push(Step::SetOperatorPools {
                    operator_id: op.id.clone(),
                    name: op.name.clone(),
                    from: current,
                    to: target,
                });
            }
            self.plan
                .objects
                .push(change(ObjectKind::Operator, op.name.clone(), fields, None));
        }
        // The last enabled owner stays (checked here, inside the apply's transaction).
        let owners_before = self
            .state
            .operators
            .iter()
            .filter(|x| x.role == Role::Owner && !x.disabled)
            .count();
        let owners_after = self
            .state
            .operators
            .iter()
            .filter(|x| {
                !x.disabled && roles.get(x.id.as_str()).copied().unwrap_or(x.role) == Role::Owner
            })
            .count();
        if owners_before > 0 && owners_after == 0 {
            if let Some(d) = docs.iter().find(|d| {
                matches!(&d.body, Body::Operator(s) if s.role != Role::Owner)
                    && self
                        .state
                        .operators
                        .iter()
                        .any(|x| x.name == d.name && x.role == Role::Owner)
            }) {
                return Err(d.origin.error(
                    ConfigErrorKind::Conflict,
                    "spec.role",
                    format!("{} is the last owner: make another owner first", d.name),
                ));
            }
        }
        if self.options.prune {
            for op in &self.state.operators {
                if roles.contains_key(op.id.as_str())
                    || op.role == Role::Owner
                    || op.pools.is_empty()
                {
                    continue;
                }
                self.plan.steps.push(Step::SetOperatorPools {
                    operator_id: op.id.clone(),
                    name: op.name.clone(),
                    from: op.pools.clone(),
                    to: Vec::new(),
                });
                self.plan.objects.push(ObjectChange {
                    kind: ObjectKind::Operator,
                    name: op.name.clone(),
                    action: Action::Pruned,
                    fields: vec![field(
                        "pools",
                        Some(pools_text(&op.pools)),
                        Some(pools_text(&[])),
                    )],
                    note: Some(
                        "no document names it: it keeps its role and loses its pools".into(),
                    ),
                });
            }
        }
        Ok(())
    }
}

/// An operator's pools for a diff: `a, b` or `none`.
fn pools_text(pools: &[String]) -> String {
    if pools.is_empty() {
        "none".to_owned()
    } else {
        pools.join(", ")
    }
}

/// An existing object: changed when any field is, else unchanged.
fn change(
    kind: ObjectKind,
    name: String,
    fields: Vec<FieldChange>,
    note: Option<String>,
) -> ObjectChange {
    ObjectChange {
        kind,
        name,
        action: if fields.is_empty() {
            Action::Unchanged
        } else {
            Action::Changed
        },
        fields,
        note,
    }
}

// ---- the diff for people ----

/// The diff as people read it: one line per object (`+` created, `~` changed, `=` unchanged,
/// `-` pruned), its changed fields below (`old → new`), and a count.
pub fn render(objects: &[ObjectChange]) -> String {
    let mut out = String::new();
    for o in objects {
        let sign = match o.action {
            Action::Created => '+',
            Action::Changed => '~',
            Action::Unchanged => '=',
            Action::Pruned => '-',
        };
        out.push_str(&format!(
            "{sign} {} {}: {}",
            o.kind.as_str(),
            o.name,
            o.action.as_str()
        ));
        if let Some(n) = &o.note {
            out.push_str(&format!(" ({n})"));
        }
        out.push('\n');
        for f in &o.fields {
            let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
            match (&f.from, &f.to) {
                (None, Some(to)) => out.push_str(&format!("    {}: {to}\n", f.field)),
                _ => out.push_str(&format!(
                    "    {}: {} → {}\n",
                    f.field,
                    text(&f.from),
                    text(&f.to)
                )),
            }
        }
    }
    out.push_str(&summary(objects));
    out.push('\n');
    out
}

/// `2 created, 1 changed, 4 unchanged, 1 pruned`, or `no changes`.
pub fn summary(objects: &[ObjectChange]) -> String {
    let count = |a: Action| objects.iter().filter(|o| o.action == a).count();
    let (c, ch, u, p) = (
        count(Action::Created),
        count(Action::Changed),
        count(Action::Unchanged),
        count(Action::Pruned),
    );
    if c + ch + p == 0 {
        return format!("no changes ({u} unchanged)");
    }
    format!("{c} created, {ch} changed, {u} unchanged, {p} pruned")
}

// ---- the store as documents (`get`) ----

/// How documents name an account: by label when exactly one account the principal sees has it
/// (and no account has it as its id), else by id.
fn account_ref(visible: &[&Account], id: &str) -> String {
    let Some(a) = visible.iter().find(|a| a.id == id) else {
        return id.to_owned();
    };
    let unique = visible.iter().filter(|x| x.label == a.label).count() == 1
        && !visible.iter().any(|x| x.id == a.label);
    if unique {
        a.label.clone()
    } else {
        a.id.clone()
    }
}

/// The documents stating the pools the principal sees (unarchived; `name`: that one only), as
/// `apply` reads them.
pub fn export_pools(state: &ConfigState, access: &Access, name: Option<&str>) -> Vec<Document> {
    let visible: Vec<&Account> = state
        .accounts
        .iter()
        .filter(|a| a.pools.iter().any(|m| access.sees_pool(&m.pool)))
        .collect();
    let mut docs = Vec::new();
    for p in &state.pools {
        if p.archived_at_ms.is_some()
            || !access.sees_pool(&p.name)
            || name.is_some_and(|n| n != p.name)
        {
            continue;
        }
        let mut members: Vec<(&Account, u32, u32)> = state
            .accounts
            .iter()
            .filter_map(|a| a.membership(&p.id).map(|m| (a, m.priority, m.weight)))
            .collect();
        members.sort_by(|a, b| (a.1, &a.0.label, &a.0.id).cmp(&(b.1, &b.0.label, &b.0.id)));
        // Oldest first; keys made by one apply (the same millisecond) by label.
        let mut keys: Vec<&PoolKey> = state
            .keys
            .iter()
            .filter(|k| k.pool_id == p.id && k.status == KeyStatus::Active)
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.label).cmp(&(b.created_at_ms, &b.label)));
        let routing = |r: &Routing| {
            RoutingDoc::from_routing(
                r,
                r.primary_account_id
                    .as_deref()
                    .map(|id| account_ref(&visible, id)),
            )
        };
        let spec = PoolSpec {
            routing: routing(&p.routing),
            accounts: members
                .iter()
                .map(|(a, priority, weight)| MembershipDoc {
                    account: account_ref(&visible, &a.id),
                    priority: *priority,
                    weight: *weight,
                    egress_proxy: a.egress_proxy.clone(),
                })
                .collect(),
            keys: keys
                .iter()
                .map(|k| KeyDoc {
                    label: k.label.clone(),
                    operator: k.operator,
                    routing: match &k.routing_override {
                        Some(r) => KeyRoutingDoc::Custom(routing(r)),
                        None => KeyRoutingDoc::Inherit,
                    },
                    policy: k.policy.clone().unwrap_or_default(),
                })
                .collect(),
            network: (!p.allowed_cidrs.is_empty()).then(|| NetworkDoc {
                allowed_cidrs: p.allowed_cidrs.to_strings(),
            }),
        };
        docs.push(Document {
            origin: Origin::synthetic("store"),
            name: p.name.clone(),
            body: Body::Pool(spec),
        });
    }
    docs
}

/// The documents stating the operators the principal sees.
pub fn export_operators(state: &ConfigState, access: &Access) -> Vec<Document> {
    let mut ops: Vec<&Operator> = state
        .operators
        .iter()
        .filter(|o| access.sees_operator(o))
        .collect();
    ops.sort_by(|a, b| a.name.cmp(&b.name));
    ops.into_iter()
        .map(|o| Document {
            origin: Origin::synthetic("store"),
            name: o.name.clone(),
            body: Body::Operator(crate::declarative::OperatorSpec {
                role: o.role,
                pools: if o.role == Role::Owner {
                    Vec::new()
                } else {
                    o.pools.clone()
                },
            }),
        })
        .collect()
}

/// A key policy's changed fields (`policy.<field>`), each value as the API spells it.
fn policy_diff(from: Option<&KeyPolicy>, to: Option<&KeyPolicy>) -> Vec<FieldChange> {
    let fields = |p: Option<&KeyPolicy>| -> BTreeMap<String, String> {
        match p.map(serde_json::to_value) {
            Some(Ok(serde_json::Value::Object(m))) => m
                .into_iter()
                .map(|(k, v)| {
                    let shown = match v {
                        serde_json::Value::Array(items) => format!(
                            "[{}]",
                            items
                                .iter()
                                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        other => other.to_string(),
                    };
                    (k, shown)
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let (a, b) = (fields(from), fields(to));
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .map(|n| field(format!("policy.{n}"), a.get(n).cloned(), b.get(n).cloned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declarative::read_all;
    use crate::records::{fixtures, Membership, RoutingMode};

    fn pool(id: &str, name: &str) -> Pool {
        Pool {
            id: id.into(),
            name: name.into(),
            routing: Routing::default(),
            created_at_ms: 0,
            archived_at_ms: None,
            allowed_cidrs: Default::default(),
        }
    }

    fn member(pool: &Pool, priority: u32) -> Membership {
        Membership {
            pool_id: pool.id.clone(),
            pool: pool.name.clone(),
            priority,
            weight: 1,
            created_at_ms: 0,
        }
    }

    fn account(id: &str, label: &str, pools: &[(&Pool, u32)]) -> Account {
        let mut a = fixtures::account(id);
        a.label = label.into();
        a.pools = pools.iter().map(|(p, prio)| member(p, *prio)).collect();
        a
    }

    fn key(id: &str, pool: &Pool, label: &str, status: KeyStatus) -> PoolKey {
        PoolKey {
            id: id.into(),
            pool_id: pool.id.clone(),
            pool: pool.name.clone(),
            label: label.into(),
            key_hash_hex: String::new(),
            status,
            operator: false,
            created_at_ms: 0,
            revoked_at_ms: None,
            routing_mode: RoutingMode::Inherit,
            routing_override: None,
            policy: None,
            usage: None,
        }
    }

    fn operator(id: &str, name: &str, role: Role, pools: &[&str]) -> Operator {
        Operator {
            id: id.into(),
            name: name.into(),
            role,
            pools: pools.iter().map(|p| (*p).to_owned()).collect(),
            disabled: false,
            totp_enabled: false,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    /// Pools a (alice, bob; keys ci, old; archived: no) and b (bob, carol); operators root
    /// (owner) and eve (admin of a).
    fn state() -> ConfigState {
        let a = pool("pool_a", "a");
        let b = pool("pool_b", "b");
        ConfigState {
            accounts: vec![
                account("acc_1", "alice@example.com", &[(&a, 0)]),
                account("acc_2", "bob@example.com", &[(&a, 1), (&b, 0)]),
                account("acc_3", "carol@example.com", &[(&b, 0)]),
            ],
            keys: vec![
                key("key_1", &a, "ci", KeyStatus::Active),
                key("key_2", &a, "old", KeyStatus::Active),
                key("key_3", &a, "gone", KeyStatus::Revoked),
            ],
            operators: vec![
                operator("op_1", "root", Role::Owner, &[]),
                operator("op_2", "eve", Role::Admin, &["a"]),
            ],
            pools: vec![a, b],
        }
    }

    fn docs(text: &str) -> Vec<Document> {
        match read_all([("t.yaml", text)]) {
            Ok(d) => d,
            Err(e) => unreachable_err(&e),
        }
    }

    fn unreachable_err(e: &ConfigError) -> ! {
        panic!("{e}")
    }

    const HEAD: &str = "api_version: codexmesh.dev/v1\n";

    fn shell() -> Access {
        Access::shell("t")
    }

    #[test]
    fn get_then_apply_changes_nothing() -> Result<(), ConfigError> {
        let state = state();
        let exported = export_pools(&state, &shell(), None);
        let text = crate::declarative::to_yaml(&exported);
        let again = read_all([("get.yaml", text.as_str())])?;
        let plan = plan(&again, &state, &shell(), ApplyOptions { prune: true })?;
        assert!(plan.is_noop(), "{:?}\n{text}", plan.steps);
        assert!(plan.objects.iter().all(|o| o.action == Action::Unchanged));
        let ops = export_operators(&state, &shell());
        let text = crate::declarative::to_yaml(&ops);
        let plan = plan_text(&text, &state, true)?;
        assert!(plan.is_noop(), "{:?}\n{text}", plan.steps);
        Ok(())
    }

    fn plan_text(text: &str, state: &ConfigState, prune: bool) -> Result<Plan, ConfigError> {
        plan(&docs(text), state, &shell(), ApplyOptions { prune })
    }

    #[test]
    fn a_diff_reads_as_people_expect() -> Result<(), ConfigError> {
        let text = format!(
            "{HEAD}kind: Pool\nmetadata: {{name: a}}\nspec:\n  routing: {{strategy: primary_first, \
             primary_account: bob@example.com, max_attempts: 2}}\n  accounts:\n    - \
             {{account: alice@example.com, priority: 0}}\n    - {{account: bob@example.com, \
             priority: 5, weight: 3}}\n  keys:\n    - {{label: ci, operator: true}}\n    - \
             {{label: gone}}\n---\n{HEAD}kind: Pool\nmetadata: {{name: c}}\nspec:\n  accounts: \
             [{{account: acc_3}}]\n  keys: [{{label: new, routing: {{strategy: round_robin}}}}]\n\
             ---\n{HEAD}kind: Operator\nmetadata: {{name: eve}}\nspec: {{role: admin, pools: [c]}}\n"
        );
        let p = plan_text(&text, &state(), true)?;
        insta::assert_snapshot!("apply_diff", render(&p.objects));
        assert!(p.publishes());
        // Pools first, removals after additions, operators last.
        let phases: Vec<u8> = p.steps.iter().map(Step::phase).collect();
        assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");
        Ok(())
    }

    #[test]
    fn an_accounts_egress_proxy_is_set_cleared_or_left_alone() -> Result<(), ConfigError> {
        let doc = |proxy: &str| {
            format!(
                "{HEAD}kind: Pool\nmetadata: {{name: a}}\nspec:\n  accounts:\n    - \
                 {{account: alice@example.com{proxy}}}\n    - {{account: bob@example.com, priority: 1}}\n  \
                 keys: [{{label: ci}}, {{label: old}}]\n"
            )
        };
        // Absent: left as it is.
        assert!(plan_text(&doc(""), &state(), false)?.is_noop());
        let p = plan_text(
            &doc(", egress_proxy: \"HTTP://Proxy.Internal:3128\""),
            &state(),
            false,
        )?;
        assert_eq!(
            p.steps,
            vec![Step::SetEgressProxy {
                account_id: "acc_1".into(),
                label: "alice@example.com".into(),
                from: None,
                to: Some("http://proxy.internal:3128".into()),
            }]
        );
        // `none` on an account with a proxy clears it.
        let mut with_proxy = state();
        with_proxy.accounts[0].egress_proxy = Some("http://proxy.internal:3128".into());
        let p = plan_text(&doc(", egress_proxy: none"), &with_proxy, false)?;
        assert!(matches!(
            &p.steps[..],
            [Step::SetEgressProxy { to: None, .. }]
        ));
        assert!(plan_text(
            &doc(", egress_proxy: \"http://proxy.internal:3128\""),
            &with_proxy,
            false
        )?
        .is_noop());
        // A bad value is refused at its path.
        let e = plan_text(&doc(", egress_proxy: \"https://p:1\""), &state(), false).unwrap_err();
        assert_eq!(e.path, "spec.accounts[0].egress_proxy", "{e}");
        Ok(())
    }

    #[test]
    fn without_prune_nothing_unnamed_is_touched() -> Result<(), ConfigError> {
        let text =
            format!("{HEAD}kind: Pool\nmetadata: {{name: a}}\nspec: {{keys: [{{label: ci}}]}}\n");
        let p = plan_text(&text, &state(), false)?;
        assert!(p.is_noop(), "{:?}", p.steps);
        let text = format!(
            "{HEAD}kind: Operator\nmetadata: {{name: eve}}\nspec: {{role: admin, pools: [b]}}\n"
        );
        let p = plan_text(&text, &state(), false)?;
        assert_eq!(
            p.steps,
            vec![Step::SetOperatorPools {
                operator_id: "op_2".into(),
                name: "eve".into(),
                from: vec!["a".into()],
                to: vec!["a".into(), "b".into()],
            }]
        );
        Ok(())
    }

    #[test]
    fn prune_removes_what_the_file_no_longer_names() -> Result<(), ConfigError> {
        let text = format!(
            "{HEAD}kind: Pool\nmetadata: {{name: a}}\nspec: {{keys: [{{label: ci}}]}}\n---\n\
             {HEAD}kind: Operator\nmetadata: {{name: root}}\nspec: {{role: owner}}\n"
        );
        let p = plan_text(&text, &state(), true)?;
        let mut steps: Vec<String> = p.steps.iter().map(|s| format!("{s:?}")).collect();
        steps.sort();
        assert_eq!(p.steps.len(), 4, "{steps:#?}");
        assert!(p.steps.contains(&Step::Leave {
            pool: "a".into(),
            account_id: "acc_2".into(),
            label: "bob@example.com".into()
        }));
        assert!(p.steps.contains(&Step::RevokeKey {
            key_id: "key_2".into(),
            pool: "a".into(),
            label: "old".into()
        }));
        assert!(p.steps.contains(&Step::ArchivePool { name: "b".into() }));
        assert!(p.steps.contains(&Step::SetOperatorPools {
            operator_id: "op_2".into(),
            name: "eve".into(),
            from: vec!["a".into()],
            to: vec![],
        }));
        // alice's only pool is a: kept, with a note.
        let alice = p
            .objects
            .iter()
            .find(|o| o.name == "a/alice@example.com")
            .ok_or_else(|| Origin::synthetic("t").invalid("", "no alice"))?;
        assert_eq!(alice.action, Action::Unchanged);
        assert!(alice
            .note
            .as_deref()
            .unwrap_or("")
            .contains("never deletes accounts"));
        Ok(())
    }

    #[test]
    fn an_admin_applies_only_its_pools_and_never_operators() -> Result<(), ConfigError> {
        let eve = Access {
            principal: crate::operators::Principal::Operator {
                id: "op_2".into(),
                name: "eve".into(),
            },
            role: Role::Admin,
            pools: vec!["a".into()],
        };
        let state = state();
        let attempt = |text: String| plan(&docs(&text), &state, &eve, ApplyOptions { prune: true });
        // Another tenant's pool and a pool nobody has are refused alike.
        let other = attempt(format!("{HEAD}kind: Pool\nmetadata: {{name: b}}\n"));
        let nobody = attempt(format!("{HEAD}kind: Pool\nmetadata: {{name: zz}}\n"));
        let (Err(other), Err(nobody)) = (other, nobody) else {
            return Err(Origin::synthetic("t").invalid("", "an admin created a pool"));
        };
        assert_eq!(other.kind, ConfigErrorKind::Forbidden);
        assert_eq!(
            other.message.replace("\"b\"", "X"),
            nobody.message.replace("\"zz\"", "X")
        );
        // Its own pool: prune archives nothing of the other tenant's.
        let p = attempt(format!(
            "{HEAD}kind: Pool\nmetadata: {{name: a}}\nspec:\n  accounts: [{{account: alice@example.com}}, {{account: bob@example.com, priority: 1}}]\n  keys: [{{label: ci}}, {{label: old}}]\n"
        ))?;
        assert!(p.is_noop(), "{:?}", p.steps);
        // carol is only in b: invisible to eve.
        let e = attempt(format!(
            "{HEAD}kind: Pool\nmetadata: {{name: a}}\nspec:\n  accounts:\n    - account: carol@example.com\n"
        ))
        .err()
        .ok_or_else(|| Origin::synthetic("t").invalid("", "carol resolved"))?;
        assert_eq!(
            (e.line, e.column, e.path.as_str()),
            (6, 7, "spec.accounts[0].account")
        );
        let e = attempt(format!(
            "{HEAD}kind: Operator\nmetadata: {{name: eve}}\nspec: {{role: admin, pools: [a]}}\n"
        ))
        .err()
        .ok_or_else(|| Origin::synthetic("t").invalid("", "admin applied an operator"))?;
        assert_eq!(e.kind, ConfigErrorKind::Forbidden);
        Ok(())
    }

    #[test]
    fn semantic_errors_name_their_line() {
        let state = state();
        let cases: &[(&str, &str)] = &[
            (
                "kind: Pool\nmetadata: {name: a}\nspec:\n  routing:\n    primary_account: carol@example.com\n",
                "t.yaml:6:5: spec.routing.primary_account: no account with id or label \"carol@example.com\" is a member of pool \"a\"",
            ),
            (
                "kind: Operator\nmetadata: {name: nobody}\nspec: {role: viewer}\n",
                "t.yaml:3:12: metadata.name: no operator named \"nobody\"",
            ),
            (
                "kind: Operator\nmetadata: {name: eve}\nspec: {role: viewer, pools: [a, nope]}\n",
                "t.yaml:4:33: spec.pools[1]: no pool named \"nope\"",
            ),
            (
                "kind: Operator\nmetadata: {name: root}\nspec: {role: admin}\n",
                "t.yaml:4:8: spec.role: root is the last owner",
            ),
        ];
        for (text, want) in cases {
            let got = match plan_text(&format!("{HEAD}{text}"), &state, false) {
                Err(e) => e.to_string(),
                Ok(p) => format!("accepted: {:?}", p.steps),
            };
            assert!(got.starts_with(want), "got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn a_revoked_label_makes_a_new_key() -> Result<(), ConfigError> {
        let text =
            format!("{HEAD}kind: Pool\nmetadata: {{name: a}}\nspec: {{keys: [{{label: gone}}]}}\n");
        let p = plan_text(&text, &state(), false)?;
        assert_eq!(
            p.steps,
            vec![Step::CreateKey {
                pool: "a".into(),
                label: "gone".into(),
                operator: false,
                routing: None,
                policy: None
            }]
        );
        let o = p.objects.iter().find(|o| o.name == "a/gone");
        assert!(o.is_some_and(|o| o
            .note
            .as_deref()
            .is_some_and(|n| n.contains("stays revoked"))));
        Ok(())
    }
}
