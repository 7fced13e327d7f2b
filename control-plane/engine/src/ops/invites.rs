//! Invite use cases (issue 15, "friends mode"): an operator creates, lists and revokes invites
//! to a pool; a person redeems one (no sign-in) and gets a pool key of their own, once.
//!
//! Rules this module keeps:
//! - creating or revoking an invite needs the right to change its pool (as issuing a key
//!   does); an invite of a pool the principal does not see does not exist for it;
//! - the code exists only in [`IssuedInvite`] (and the link made from it), shown once; the store
//!   keeps its SHA-256; the minted key's secret only in [`RedeemedKey`];
//! - input (label, use count, lifetime, policy, the redeemer's name) is checked before the
//!   store is opened or written;
//! - redemption is throttled with the sign-in throttle, per client address: a code that matches
//!   no invite counts as a failed attempt, and while the address is locked its attempts are
//!   refused unheard (and not audited, so they cannot grow the log);
//! - every create, revoke and redemption is audited, refusals too (the redeemer as
//!   `invite:NAME`, with the new key's id; never the code or the key).

use super::operators::{unlocked_client, CLIENT_THROTTLE};
use super::{Notice, Ops, OpsError, Outcome};
use codexmesh_model::ids;
use codexmesh_model::invites::{
    invite_code_hash_hex, invite_link, looks_like_invite_code, validate_max_uses, validate_ttl_ms,
    Invite, RawInviteCode,
};
use codexmesh_model::keys::RawKey;
use codexmesh_model::policy::KeyPolicy;
use codexmesh_model::util::now_ms;
use codexmesh_store::{
    Actor, Changed, ConflictReason, Entity, Lookup, NewInvite, PoolKey, Redeemed, StoreError,
};

/// What an operator asks for.
#[derive(Debug, Clone)]
pub struct InviteRequest<'a> {
    pub pool: &'a str,
    pub label: Option<&'a str>,
    /// How many people may redeem it.
    pub max_uses: u32,
    /// How long it stays valid from now.
    pub expires_in_ms: i64,
    /// The policy each key minted from it gets.
    pub policy: KeyPolicy,
}

/// A new invite, its code and the link that carries it: shown once.
#[derive(Debug)]
pub struct IssuedInvite {
    pub invite: Invite,
    pub code: RawInviteCode,
    pub link: String,
}

/// What a redeemer gets: their key and its secret (shown once), and where clients reach the
/// gateway (setting `gateway_url`; None when unknown) for the client snippets.
#[derive(Debug)]
pub struct RedeemedKey {
    pub key: PoolKey,
    pub secret: RawKey,
    pub gateway: Option<String>,
}

fn invalid_policy(e: codexmesh_model::policy::InvalidPolicy) -> OpsError {
    OpsError::Invalid {
        field: "policy",
        message: format!("policy.{e}"),
    }
}

/// Creates an invite to `request.pool`.
pub async fn create(
    ops: &Ops,
    request: &InviteRequest<'_>,
) -> Result<Outcome<IssuedInvite>, OpsError> {
    let result = async {
        if let Some(l) = request.label {
            codexmesh_store::validate_label(l)?;
        }
        validate_max_uses(request.max_uses).map_err(StoreError::from)?;
        validate_ttl_ms(request.expires_in_ms).map_err(StoreError::from)?;
        request.policy.validate().map_err(invalid_policy)?;
        ops.change_pool(request.pool)?;
        let store = ops.store().await?;
        if store
            .pool_by_name(request.pool)
            .await?
            .archived_at_ms
            .is_some()
        {
            return Err(StoreError::Conflict {
                what: Entity::Pool,
                ident: request.pool.to_owned(),
                reason: ConflictReason::Archived,
            }
            .into());
        }
        let code = RawInviteCode::generate().map_err(StoreError::from)?;
        let invite = store
            .create_invite(
                ops.actor(),
                &NewInvite {
                    pool: request.pool,
                    label: request.label,
                    code_hash_hex: &code.hash_hex(),
                    policy: &request.policy,
                    max_uses: request.max_uses,
                    expires_at_ms: now_ms().saturating_add(request.expires_in_ms),
                },
            )
            .await?;
        let mut notices = vec![Notice::note(
            "invite_code_shown_once",
            "the link holds the invite's code: it is shown this once (only its hash is kept)",
        )];
        if ops.settings().public_url.trim().is_empty() {
            notices.push(Notice::note(
                "public_url_unset",
                "the link uses the admin listener's address: set CODEXMESH_PUBLIC_URL to the \
                 address people reach the control plane at",
            ));
        }
        let link = invite_link(&ops.settings().public_base_url(), &code);
        Ok(Outcome::with_notices(
            IssuedInvite { invite, code, link },
            notices,
        ))
    }
    .await;
    ops.audited("invite.create", request.label, &[request.pool], result)
        .await
}

/// The invites the principal sees (of `pool`, or of all its pools), newest first.
pub async fn list(ops: &Ops, pool: Option<&str>) -> Result<Outcome<Vec<Invite>>, OpsError> {
    if let Some(p) = pool {
        ops.see_pool(p)?;
    }
    let store = ops.store().await?;
    let mut invites = store.list_invites(pool).await?;
    invites.retain(|i| ops.access().sees_pool(&i.pool));
    Ok(Outcome::new(invites))
}

/// One invite the principal sees, by id or label (else not found, worded as for an unknown
/// one).
pub async fn get(ops: &Ops, ident: &str) -> Result<Outcome<Invite>, OpsError> {
    Ok(Outcome::new(invite_to_see(ops, ident).await?))
}

/// An invite by id, else by label, among those the principal sees (several with that label:
/// ambiguous, naming their ids).
async fn invite_to_see(ops: &Ops, ident: &str) -> Result<Invite, OpsError> {
    let store = ops.store().await?;
    let mut found: Vec<Invite> = store
        .list_invites(None)
        .await?
        .into_iter()
        .filter(|i| {
            ops.access().sees_pool(&i.pool) && (i.id == ident || i.label.as_deref() == Some(ident))
        })
        .collect();
    if let Some(i) = found.iter().position(|i| i.id == ident) {
        return Ok(found.swap_remove(i));
    }
    match found.len() {
        0 => Err(StoreError::NotFound {
            what: Entity::Invite,
            ident: ident.to_owned(),
            lookup: Lookup::IdOrLabel,
        }
        .into()),
        1 => Ok(found.swap_remove(0)),
        _ => Err(StoreError::Ambiguous {
            what: Entity::Invite,
            ident: ident.to_owned(),
            ids: found
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into()),
    }
}

/// Revokes an invite: nobody can redeem it any more; keys already minted from it stay.
pub async fn revoke(ops: &Ops, ident: &str) -> Result<Outcome<Changed<Invite>>, OpsError> {
    let mut pool = None;
    let result = async {
        let invite = invite_to_see(ops, ident).await?;
        pool = Some(invite.pool.clone());
        ops.change_pool(&invite.pool)?;
        let store = ops.store().await?;
        Ok(Outcome::new(
            store.revoke_invite(ops.actor(), &invite.id).await?,
        ))
    }
    .await;
    let pools: Vec<&str> = pool.as_deref().into_iter().collect();
    ops.audited("invite.revoke", Some(ident), &pools, result)
        .await
}

/// Redeems `code` for a person called `name` (the new key's label). No principal is needed:
/// the code is the credential. See the module doc for the throttle and the audit.
pub async fn redeem(ops: &Ops, code: &str, name: &str) -> Result<Outcome<RedeemedKey>, OpsError> {
    let shown = if ids::validate_label(name).is_ok() {
        name
    } else {
        "(invalid name)"
    };
    let actor = Actor::new(format!("invite:{shown}")).from_client(ops.actor().client.clone());
    let client = unlocked_client(ops, "invite codes").await?;
    let result = async {
        ids::validate_label(name).map_err(|e| OpsError::Invalid {
            field: "name",
            message: e.message.replace("label", "name"),
        })?;
        let store = ops.store().await?;
        let redeemed = if looks_like_invite_code(code) {
            store
                .redeem_invite(&actor, &invite_code_hash_hex(code), name)
                .await
        } else {
            Err(StoreError::NotFound {
                what: Entity::Invite,
                ident: "(given)".to_owned(),
                lookup: Lookup::Valid,
            })
        };
        if let Err(StoreError::NotFound {
            what: Entity::Invite,
            ..
        }) = &redeemed
        {
            store
                .record_client_failure(&client, CLIENT_THROTTLE)
                .await?;
        }
        let Redeemed { key, secret, .. } = redeemed?;
        let gateway = ops.settings().gateway_url.trim().trim_end_matches('/');
        Ok(Outcome::with_notices(
            RedeemedKey {
                key,
                secret,
                gateway: (!gateway.is_empty()).then(|| gateway.to_owned()),
            },
            vec![Notice::note(
                "key_shown_once",
                "this is the only time the key is shown: store it now",
            )],
        ))
    }
    .await;
    if let Err(e) = &result {
        // A closed invite names itself (the caller knew its code); an unknown code names nothing.
        let target = match e {
            OpsError::Store(StoreError::Conflict {
                what: Entity::Invite,
                ident,
                ..
            }) => Some(ident.as_str()),
            _ => None,
        };
        ops.audit_refusal_as(&actor, "invite.redeem", target, &[], e)
            .await;
    }
    result
}
