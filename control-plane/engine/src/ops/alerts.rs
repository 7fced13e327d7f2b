//! Alert use cases: webhooks (add, list, remove, send a test) and the alert episodes.
//!
//! Rules:
//! - a webhook for one pool is managed by whoever may change that pool; one without a pool
//!   hears every pool's alerts, so only an owner adds, sees or removes it (for anyone else it
//!   does not exist: the 404 rule);
//! - the signing secret is generated here, returned once by [`add_webhook`] and stored sealed;
//!   nothing else ever returns it; URLs are shown by their origin only;
//! - episodes are shown for the pools the principal sees, and the Envoy ones (no pool) to all;
//! - adding and removing are audited by the store; a test delivery is audited here
//!   (`alert.webhook_test`, with its result); refusals by [`Ops::audited`].

use serde::Serialize;

use super::{Ops, OpsError, Outcome};
use codexmesh_model::alerts::{AlertKind, Episode, Webhook, WebhookSecret};
use codexmesh_model::util::now_ms;
use codexmesh_store::crypto::Keys;
use codexmesh_store::{Entity, Lookup, StoreError, WEBHOOK_SECRET_FIELD};

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Most episodes one listing returns.
pub const MAX_EPISODES: i64 = 500;

/// A new webhook and its signing secret: the only time the secret is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_…`: verify `x-codexmesh-signature` with it. Shown once.
    pub secret: String,
}

/// What a test delivery did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookTest {
    pub webhook: String,
    pub delivered: bool,
    /// The HTTP status (0: no answer).
    pub status: u16,
    pub error: Option<String>,
}

fn check_url(url: &str) -> Result<(), OpsError> {
    let invalid = |m: &str| OpsError::invalid("url", format!("webhook URL: {m}"));
    if url.len() > MAX_URL_LEN {
        return Err(invalid(&format!("longer than {MAX_URL_LEN} characters")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("must be http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    Ok(())
}

impl Ops {
    fn sees_webhook(&self, w: &Webhook) -> bool {
        match &w.pool {
            Some(p) => self.access().sees_pool(p),
            None => self.access().role.sees_all_pools(),
        }
    }

    /// The webhook `ident` (id or name) as the principal may change it.
    async fn webhook_to_change(&self, ident: &str) -> Result<Webhook, OpsError> {
        let hook = match self.store().await?.webhook(ident).await {
            Ok(h) if self.sees_webhook(&h) => h,
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                return Err(StoreError::NotFound {
                    what: Entity::Webhook,
                    ident: ident.to_owned(),
                    lookup: Lookup::IdOrLabel,
                }
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        self.require_writer()?;
        Ok(hook)
    }
}

/// Adds a webhook for `pool` (None: every pool) and returns its secret, once.
pub async fn add_webhook(
    ops: &Ops,
    name: &str,
    url: &str,
    pool: Option<&str>,
) -> Result<Outcome<NewWebhook>, OpsError> {
    let result = async {
        codexmesh_store::validate_label(name)
            .map_err(|e| OpsError::invalid("name", e.to_string()))?;
        check_url(url)?;
        match pool {
            Some(p) => ops.change_pool(p)?,
            None => ops.require_owner("add a webhook for every pool")?,
        }
        let secret = WebhookSecret::generate().map_err(StoreError::from)?;
        let keys = ops.settings().master_keys()?;
        let store = ops.store().await?;
        let webhook = store
            .create_webhook(ops.actor(), name, url, pool, secret.expose(), &keys)
            .await?;
        Ok(Outcome::new(NewWebhook {
            webhook,
            secret: secret.expose().to_owned(),
        }))
    }
    .await;
    ops.audited(
        "alert.webhook_add",
        Some(name),
        &pool.into_iter().collect::<Vec<_>>(),
        result,
    )
    .await
}

/// The webhooks the principal sees.
pub async fn list_webhooks(ops: &Ops) -> Result<Outcome<Vec<Webhook>>, OpsError> {
    let store = ops.store().await?;
    let mut hooks = store.list_webhooks().await?;
    hooks.retain(|h| ops.sees_webhook(h));
    Ok(Outcome::new(hooks))
}

/// Removes a webhook (by id or name).
pub async fn remove_webhook(ops: &Ops, ident: &str) -> Result<Outcome<Webhook>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let hook = ops.webhook_to_change(ident).await?;
        pools.extend(hook.pool.clone());
        let store = ops.store().await?;
        Ok(Outcome::new(
            store.delete_webhook(ops.actor(), &hook.id).await?,
        ))
    }
    .await;
    let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
    ops.audited("alert.webhook_remove", Some(ident), &pools, result)
        .await
}

/// Sends a signed test delivery (`kind: "test"`) to a webhook now and records the result.
pub async fn test_webhook(ops: &Ops, ident: &str) -> Result<Outcome<WebhookTest>, OpsError> {
    let mut pools = Vec::new();
    let result = async {
        let hook = ops.webhook_to_change(ident).await?;
        pools.extend(hook.pool.clone());
        let store = ops.store().await?;
        let (url, sealed) = store.webhook_target(&hook.id).await?;
        let secret = ops
            .settings()
            .master_keys()?
            .open(&hook.id, WEBHOOK_SECRET_FIELD, &sealed)
            .map_err(StoreError::from)?;
        let secret = String::from_utf8(secret)
            .map_err(|_| StoreError::Corrupt("a webhook secret is not text".into()))?;
        let now = now_ms();
        let body = serde_json::json!({
            "episode": "test",
            "kind": "test",
            "subject": hook.name,
            "pool": hook.pool,
            "severity": "warning",
            "state": "firing",
            "opened_at": now,
            "closed_at": null,
            "message": "a test delivery from codexmesh",
        })
        .to_string();
        let http = crate::oauth::http_client_for(ops.settings())
            .map_err(|e| OpsError::Http(e.to_string()))?;
        let sent = crate::webhooks::send(&http, &url, &secret, &body).await;
        let (status, error) = match &sent {
            Ok(s) => (*s, None),
            Err(f) => (f.status, Some(f.message.clone())),
        };
        store
            .record_webhook_result(&hook.id, status, error.as_deref())
            .await?;
        store
            .audit_refusal(
                ops.actor(),
                "alert.webhook_test",
                Some(&hook.id),
                "ok",
                &pools,
                serde_json::json!({"name": hook.name, "status": status, "delivered": sent.is_ok()}),
            )
            .await?;
        Ok(Outcome::new(WebhookTest {
            webhook: hook.name,
            delivered: sent.is_ok(),
            status,
            error,
        }))
    }
    .await;
    let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
    ops.audited("alert.webhook_test", Some(ident), &pools, result)
        .await
}

/// Alert episodes the principal sees, newest first (`open_only`: those still firing).
pub async fn episodes(
    ops: &Ops,
    open_only: bool,
    limit: Option<i64>,
) -> Result<Outcome<Vec<Episode>>, OpsError> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_EPISODES).contains(&limit) {
        return Err(OpsError::invalid(
            "limit",
            format!("limit {limit} is outside 1..={MAX_EPISODES}"),
        ));
    }
    let store = ops.store().await?;
    let mut all = store.alert_episodes(open_only, MAX_EPISODES * 4).await?;
    all.retain(|e| match &e.pool {
        Some(p) => ops.access().sees_pool(p),
        None => e.kind == AlertKind::EnvoyNotAcking,
    });
    all.truncate(usize::try_from(limit).unwrap_or(100));
    Ok(Outcome::new(all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(check_url("https://hooks.example.com/x").is_ok());
        assert!(check_url("http://127.0.0.1:9/").is_ok());
        for bad in ["ftp://x/", "not a url", "https://", "file:///etc/passwd"] {
            let e = check_url(bad).err();
            assert_eq!(e.as_ref().and_then(|e| e.field()), Some("url"), "{bad}");
        }
    }
}
