//! Alerts (issue 15): webhooks, episodes, the delivery outbox, and the pools' usage samples the
//! forecast projects from (migration 0015).
//!
//! Rules:
//! - none of it is snapshot input: webhook changes take the `meta` row without bumping the
//!   revision ([`Store::begin_unpublished_write`]) and are audited there; episodes, deliveries
//!   and samples are bookkeeping (no revision, no audit row);
//! - a webhook's signing secret is sealed under the master key (owner: the webhook id, field
//!   [`WEBHOOK_SECRET_FIELD`]) and opened only to sign a delivery; the URL is stored as given
//!   and shown by its origin only ([`shown_url`]);
//! - at most one open episode per (kind, subject) (a partial unique index): opening one that is
//!   open already is a no-op, so two evaluators never fire twice; opening queues one `firing`
//!   delivery per webhook that hears the pool, closing one `resolved` per webhook that got the
//!   firing, in the same transaction (the outbox);
//! - samples are kept [`SAMPLE_RETENTION_MS`]; closed episodes [`EPISODE_RETENTION_MS`].

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::audit::audit;
use crate::crypto::Keys;
use crate::error::{ConflictReason, Entity, Lookup, StoreError};
use crate::rows::{col, NullableF64};
use crate::sealing::sealing_key_tx;
use crate::tx::{is_unique_violation, pool_by_name_tx};
use crate::{Actor, Store};
use codexmesh_model::alerts::{
    shown_url, AlertKind, AlertState, Condition, Episode, OpenEpisode, Webhook,
};
use codexmesh_model::util::{self, now_ms};

/// The associated-data field a webhook secret is sealed with.
pub const WEBHOOK_SECRET_FIELD: &str = "webhook_secret";
/// Usage samples older than this are deleted.
pub const SAMPLE_RETENTION_MS: i64 = 8 * 24 * 3600 * 1000;
/// Closed episodes (and their deliveries) older than this are deleted.
pub const EPISODE_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

const WEBHOOK_SELECT: &str = "SELECT w.id AS id, w.name AS name, w.url AS url, p.name AS pool, \
     w.created_at AS created_at, w.last_delivery_at AS last_delivery_at, \
     w.last_status AS last_status, w.last_error AS last_error \
     FROM alert_webhooks w LEFT JOIN pools p ON p.id = w.pool_id";

const EPISODE_SELECT: &str = "SELECT id, kind, subject, pool, severity, message, opened_at, \
     closed_at FROM alert_episodes";

fn webhook_from_row(r: &AnyRow) -> Result<Webhook, StoreError> {
    let url: String = col(r, "url")?;
    Ok(Webhook {
        id: col(r, "id")?,
        name: col(r, "name")?,
        url: shown_url(&url),
        pool: col(r, "pool")?,
        created_at_ms: col(r, "created_at")?,
        last_delivery_at_ms: col(r, "last_delivery_at")?,
        last_status: col::<Option<i64>>(r, "last_status")?.map(|s| u16::try_from(s).unwrap_or(0)),
        last_error: col(r, "last_error")?,
    })
}

fn episode_from_row(r: &AnyRow) -> Result<Episode, StoreError> {
    let kind: String = col(r, "kind")?;
    let kind = AlertKind::parse(&kind)
        .ok_or_else(|| StoreError::Corrupt(format!("alert kind {kind:?}")))?;
    Ok(Episode {
        id: col(r, "id")?,
        kind,
        subject: col(r, "subject")?,
        pool: col(r, "pool")?,
        severity: kind.severity(),
        message: col(r, "message")?,
        opened_at_ms: col(r, "opened_at")?,
        closed_at_ms: col(r, "closed_at")?,
    })
}

/// A delivery that is due, with what the sender needs (the sealed secret stays sealed here).
#[derive(Clone)]
pub struct DueDelivery {
    pub episode: Episode,
    pub webhook_id: String,
    pub webhook_name: String,
    /// The full URL (not for display).
    pub url: String,
    pub sealed_secret: Vec<u8>,
    pub state: AlertState,
    pub attempts: u32,
}

impl std::fmt::Debug for DueDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueDelivery")
            .field("episode", &self.episode.id)
            .field("webhook", &self.webhook_name)
            .field("state", &self.state)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// A pool's usage sample (mean used % per window over its active accounts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSample {
    pub at_ms: i64,
    pub primary_used: Option<f64>,
    pub secondary_used: Option<f64>,
}

async fn webhook_tx(
    tx: &mut Transaction<'static, Any>,
    ident: &str,
) -> Result<Webhook, StoreError> {
    let row = sqlx::query(&format!("{WEBHOOK_SELECT} WHERE w.id = $1 OR w.name = $1"))
        .bind(ident.to_owned())
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref()
        .map(webhook_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::not_found(Entity::Webhook, ident, Lookup::IdOrLabel))
}

impl Store {
    /// Adds a webhook (optionally for one pool) with its signing secret sealed; audited.
    pub async fn create_webhook(
        &self,
        actor: &Actor,
        name: &str,
        url: &str,
        pool: Option<&str>,
        secret: &str,
        keys: &(impl Keys + ?Sized),
    ) -> Result<Webhook, StoreError> {
        crate::tx::validate_label(name).map_err(|e| match e {
            StoreError::Invalid { message, .. } => StoreError::invalid("name", message),
            other => other,
        })?;
        let ring = keys.reload();
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let pool_id = match pool {
            Some(p) => Some(pool_by_name_tx(&mut tx, p).await?.id),
            None => None,
        };
        let id = util::new_id("whk")?;
        let key = sealing_key_tx(&mut tx, &*ring).await?;
        let sealed = key.seal(&id, WEBHOOK_SECRET_FIELD, secret.as_bytes())?;
        sqlx::query(
            "INSERT INTO alert_webhooks (id, name, url, pool_id, sealed_secret, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.clone())
        .bind(name.to_owned())
        .bind(url.to_owned())
        .bind(pool_id)
        .bind(sealed)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::conflict(Entity::Webhook, name, ConflictReason::NameTaken)
            } else {
                e.into()
            }
        })?;
        let hook = webhook_tx(&mut tx, &id).await?;
        audit(
            &mut tx,
            actor,
            "alert.webhook_add",
            Some(&id),
            json!({"name": hook.name, "url": hook.url, "pool": hook.pool}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(hook)
    }

    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        sqlx::query(&format!("{WEBHOOK_SELECT} ORDER BY w.name"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(webhook_from_row)
            .collect()
    }

    /// A webhook by id or name.
    pub async fn webhook(&self, ident: &str) -> Result<Webhook, StoreError> {
        let mut tx = self.pool.begin().await?;
        let hook = webhook_tx(&mut tx, ident).await;
        tx.rollback().await?;
        hook
    }

    /// Deletes a webhook (and its queued deliveries); audited.
    pub async fn delete_webhook(&self, actor: &Actor, ident: &str) -> Result<Webhook, StoreError> {
        let (mut tx, revision) = self.begin_unpublished_write().await?;
        let hook = webhook_tx(&mut tx, ident).await?;
        sqlx::query("DELETE FROM alert_deliveries WHERE webhook_id = $1")
            .bind(hook.id.clone())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM alert_webhooks WHERE id = $1")
            .bind(hook.id.clone())
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            actor,
            "alert.webhook_remove",
            Some(&hook.id),
            json!({"name": hook.name, "url": hook.url, "pool": hook.pool}),
            revision,
        )
        .await?;
        tx.commit().await?;
        Ok(hook)
    }

    /// The full URL and the sealed secret of a webhook (to send a test delivery).
    pub async fn webhook_target(&self, id: &str) -> Result<(String, Vec<u8>), StoreError> {
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT url, sealed_secret FROM alert_webhooks WHERE id = $1")
                .bind(id.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        row.ok_or_else(|| StoreError::not_found(Entity::Webhook, id, Lookup::Id))
    }

    /// Records the latest delivery attempt to a webhook (status 0: no HTTP answer).
    pub async fn record_webhook_result(
        &self,
        id: &str,
        status: u16,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE alert_webhooks SET last_delivery_at = $2, last_status = $3, last_error = $4 \
             WHERE id = $1",
        )
        .bind(id.to_owned())
        .bind(now_ms())
        .bind(i64::from(status))
        .bind(error.map(|e| e.chars().take(512).collect::<String>()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The episodes open now.
    pub async fn open_episodes(&self) -> Result<Vec<OpenEpisode>, StoreError> {
        Ok(self
            .alert_episodes(true, 10_000)
            .await?
            .into_iter()
            .map(|e| OpenEpisode {
                id: e.id,
                kind: e.kind,
                subject: e.subject,
            })
            .collect())
    }

    /// Episodes, newest first: only open ones, or all (at most `limit`).
    pub async fn alert_episodes(
        &self,
        open_only: bool,
        limit: i64,
    ) -> Result<Vec<Episode>, StoreError> {
        let filter = if open_only {
            " WHERE closed_at IS NULL"
        } else {
            ""
        };
        sqlx::query(&format!(
            "{EPISODE_SELECT}{filter} ORDER BY opened_at DESC, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(episode_from_row)
        .collect()
    }

    /// Opens an episode for `c` and queues a `firing` delivery to each webhook that hears its
    /// pool. None when one is open already (another evaluator was first).
    pub async fn open_episode(&self, c: &Condition) -> Result<Option<Episode>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id = util::new_id("alr")?;
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO alert_episodes (id, kind, subject, pool, severity, message, opened_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.clone())
        .bind(c.kind.as_str())
        .bind(c.subject.clone())
        .bind(c.pool.clone())
        .bind(c.kind.severity().as_str())
        .bind(c.message.clone())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        sqlx::query(
            "INSERT INTO alert_deliveries (episode_id, webhook_id, state, next_attempt_at) \
             SELECT $1, w.id, 'firing', $2 FROM alert_webhooks w \
             LEFT JOIN pools p ON p.id = w.pool_id \
             WHERE w.pool_id IS NULL OR p.name = $3",
        )
        .bind(id.clone())
        .bind(now)
        .bind(c.pool.clone().unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(&format!("{EPISODE_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let episode = episode_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(episode))
    }

    /// Closes an open episode and queues a `resolved` delivery to each webhook that was sent
    /// its firing. False when it was closed already.
    pub async fn close_episode(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE alert_episodes SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL",
        )
        .bind(id.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO alert_deliveries (episode_id, webhook_id, state, next_attempt_at) \
             SELECT episode_id, webhook_id, 'resolved', $2 FROM alert_deliveries \
             WHERE episode_id = $1 AND state = 'firing'",
        )
        .bind(id.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deliveries not done whose next attempt is due, oldest first (firing before resolved).
    pub async fn due_deliveries(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT e.id AS id, e.kind AS kind, e.subject AS subject, e.pool AS pool, \
               e.severity AS severity, e.message AS message, e.opened_at AS opened_at, \
               e.closed_at AS closed_at, d.webhook_id AS webhook_id, w.name AS webhook_name, \
               w.url AS url, w.sealed_secret AS sealed_secret, d.state AS state, \
               d.attempts AS attempts \
             FROM alert_deliveries d JOIN alert_episodes e ON e.id = d.episode_id \
             JOIN alert_webhooks w ON w.id = d.webhook_id \
             WHERE d.done_at IS NULL AND d.next_attempt_at <= $1 \
               AND (d.state = 'firing' OR NOT EXISTS (SELECT 1 FROM alert_deliveries f \
                 WHERE f.episode_id = d.episode_id AND f.webhook_id = d.webhook_id \
                   AND f.state = 'firing' AND f.done_at IS NULL)) \
             ORDER BY e.opened_at, d.state, d.webhook_id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = col(r, "state")?;
                Ok(DueDelivery {
                    episode: episode_from_row(r)?,
                    webhook_id: col(r, "webhook_id")?,
                    webhook_name: col(r, "webhook_name")?,
                    url: col(r, "url")?,
                    sealed_secret: col(r, "sealed_secret")?,
                    state: AlertState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("delivery state {state:?}")))?,
                    attempts: u32::try_from(col::<i64>(r, "attempts")?).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Records one attempt of a delivery: done (delivered or given up) or retried at
    /// `next_attempt_at`. Only the attempt count read (`attempts`) is updated, so two senders
    /// cannot both count the same attempt.
    pub async fn record_delivery_attempt(
        &self,
        d: &DueDelivery,
        status: u16,
        next_attempt_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE alert_deliveries SET attempts = attempts + 1, last_status = $4, \
               done_at = $5, next_attempt_at = $6 \
             WHERE episode_id = $1 AND webhook_id = $2 AND state = $3 AND attempts = $7 \
               AND done_at IS NULL",
        )
        .bind(d.episode.id.clone())
        .bind(d.webhook_id.clone())
        .bind(d.state.as_str())
        .bind(i64::from(status))
        .bind(if next_attempt_at.is_none() {
            Some(now)
        } else {
            None
        })
        .bind(next_attempt_at.unwrap_or(now))
        .bind(i64::from(d.attempts))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Appends a usage sample of a pool (replacing one at the same millisecond).
    pub async fn record_pool_sample(
        &self,
        pool_id: &str,
        sample: PoolSample,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pool_usage_samples (pool_id, at_ms, primary_used, secondary_used) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (pool_id, at_ms) DO UPDATE SET \
             primary_used = excluded.primary_used, secondary_used = excluded.secondary_used",
        )
        .bind(pool_id.to_owned())
        .bind(sample.at_ms)
        .bind(NullableF64(sample.primary_used))
        .bind(NullableF64(sample.secondary_used))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A pool's samples taken at or after `since_ms`, oldest first.
    pub async fn pool_samples(
        &self,
        pool_id: &str,
        since_ms: i64,
    ) -> Result<Vec<PoolSample>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, primary_used, secondary_used FROM pool_usage_samples \
             WHERE pool_id = $1 AND at_ms >= $2 ORDER BY at_ms",
        )
        .bind(pool_id.to_owned())
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PoolSample {
                    at_ms: col(r, "at_ms")?,
                    primary_used: col(r, "primary_used")?,
                    secondary_used: col(r, "secondary_used")?,
                })
            })
            .collect()
    }

    /// Deletes samples and closed episodes past their retention.
    pub async fn prune_alert_history(&self, now: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pool_usage_samples WHERE at_ms < $1")
            .bind(now - SAMPLE_RETENTION_MS)
            .execute(&self.pool)
            .await?;
        let old = now - EPISODE_RETENTION_MS;
        sqlx::query(
            "DELETE FROM alert_deliveries WHERE episode_id IN \
             (SELECT id FROM alert_episodes WHERE closed_at IS NOT NULL AND closed_at < $1)",
        )
        .bind(old)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM alert_episodes WHERE closed_at IS NOT NULL AND closed_at < $1")
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
