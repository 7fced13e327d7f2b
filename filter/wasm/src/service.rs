//! The bootstrap singleton: holds the Subscribe stream to the control plane, publishes snapshots
//! to shared data, and ships outcome records back in Report batches.
//!
//! Each snapshot is checked before it is published (`filter_core::acceptance`): a valid one is
//! published and ACKed, an invalid one (or one Envoy refuses to store) is not published and is
//! NACKed with the reason, and the Envoy keeps serving what it had. A verdict goes out in a
//! Report at once (with whatever outcomes wait, or none), is retried after the report interval
//! when that fails, and is not repeated for the same version.

use std::collections::VecDeque;
use std::time::Duration;

use codexmesh_filter_core::acceptance::{self, Rejection, Verdicts};
use codexmesh_filter_core::config::ServiceConfig;
use codexmesh_filter_core::snapshot::encode_version;
use codexmesh_filter_core::supervisor::{Action, Supervisor};
use codexmesh_filter_core::{outbox, pb};
use prost::Message;
use proxy_wasm::hostcalls;
use proxy_wasm::types::LogLevel;

use crate::{cache, host, OUTCOME_QUEUE};

/// Outcomes kept while the control plane is unreachable; older ones are dropped first.
const PENDING_CAP: usize = 20_000;
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
const GRPC_UNAUTHENTICATED: u32 = 16;

pub struct Service {
    cfg: ServiceConfig,
    supervisor: Supervisor,
    queue_id: Option<u32>,
    pending: VecDeque<pb::Outcome>,
    report_in_flight: Option<InFlight>,
    last_report_ms: i64,
    dropped_outcomes: u64,
    verdicts: Verdicts,
}

/// A Report call on its way: its token, how many pending outcomes and which verdicts it carries.
struct InFlight {
    token: u32,
    outcomes: usize,
    statuses: Vec<pb::SnapshotStatus>,
}

impl Service {
    pub fn new(cfg: ServiceConfig, now_ms: i64) -> Self {
        let seed = u64::try_from(now_ms).unwrap_or(0) ^ 0x636f_6465_786d_6573;
        Self {
            supervisor: Supervisor::new(cfg.supervisor, seed),
            cfg,
            queue_id: None,
            pending: VecDeque::new(),
            report_in_flight: None,
            last_report_ms: now_ms,
            dropped_outcomes: 0,
            verdicts: Verdicts::default(),
        }
    }

    pub fn start(&mut self, now_ms: i64) -> bool {
        match hostcalls::register_shared_queue(OUTCOME_QUEUE) {
            Ok(id) => self.queue_id = Some(id),
            Err(status) => host::log(
                LogLevel::Error,
                &format!("cannot register outcome queue: {status:?}"),
            ),
        }
        if let Err(status) = host::set_tick_period(self.cfg.tick_ms) {
            host::log(LogLevel::Critical, &format!("cannot set timer: {status:?}"));
            return false;
        }
        self.on_tick(now_ms);
        true
    }

    pub fn reconfigure(&mut self, cfg: ServiceConfig) {
        // Knobs apply from now on; the open stream is kept.
        if cfg.tick_ms != self.cfg.tick_ms {
            let _ = host::set_tick_period(cfg.tick_ms);
        }
        self.cfg = cfg;
    }

    pub fn on_tick(&mut self, now_ms: i64) {
        match self.supervisor.tick(now_ms) {
            Action::None => {}
            Action::Open => self.open_stream(now_ms),
            Action::Cancel(token) => {
                host::log(
                    LogLevel::Warn,
                    "control-plane stream silent past the watchdog; reconnecting",
                );
                let _ = hostcalls::cancel_grpc_stream(token);
            }
        }
        self.maybe_report(now_ms);
    }

    fn grpc_target(&self) -> String {
        // A serialized envoy.config.core.v3.GrpcService{envoy_grpc{cluster_name}}: Envoy takes a
        // bare string only when it fails to parse as that message, which is fragile.
        let name = self.cfg.control_plane_cluster.as_bytes();
        let mut inner = vec![0x0a];
        prost::encoding::encode_varint(name.len() as u64, &mut inner);
        inner.extend_from_slice(name);
        let mut outer = vec![0x0a];
        prost::encoding::encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        // Cluster names are short ASCII, so every byte is below 0x80 and this is valid UTF-8.
        String::from_utf8(outer).unwrap_or_default()
    }

    fn auth_metadata(&self) -> Option<String> {
        match std::env::var(&self.cfg.push_token_env) {
            Ok(token) if !token.trim().is_empty() => Some(format!("Bearer {}", token.trim())),
            _ => None,
        }
    }

    fn open_stream(&mut self, now_ms: i64) {
        let Some(auth) = self.auth_metadata() else {
            host::log(
                LogLevel::Error,
                &format!(
                    "push token missing: start Envoy with {} set and list it in vm_config.environment_variables.host_env_keys",
                    self.cfg.push_token_env
                ),
            );
            self.supervisor.open_failed(now_ms);
            return;
        };
        let target = self.grpc_target();
        let opened = hostcalls::open_grpc_stream(
            &target,
            codexmesh_proto::names::MESH_SERVICE,
            codexmesh_proto::names::SUBSCRIBE_METHOD,
            vec![("authorization", auth.as_bytes())],
        );
        let token = match opened {
            Ok(token) => token,
            Err(status) => {
                host::log(
                    LogLevel::Warn,
                    &format!("cannot open control-plane stream: {status:?}"),
                );
                self.supervisor.open_failed(now_ms);
                return;
            }
        };
        let request = pb::SubscribeRequest {
            node_id: self.cfg.node_id.clone(),
            known_version: self.verdicts.applied(),
            client_build: env!("CARGO_PKG_VERSION").to_string(),
            egress_proxies: self.cfg.egress_proxies.clone(),
        };
        // Server streaming: our half closes after the request, the server's stays open.
        if let Err(status) =
            hostcalls::send_grpc_stream_message(token, Some(&request.encode_to_vec()), true)
        {
            host::log(
                LogLevel::Warn,
                &format!("cannot send subscribe request: {status:?}"),
            );
            let _ = hostcalls::cancel_grpc_stream(token);
            self.supervisor.open_failed(now_ms);
            return;
        }
        self.supervisor.opened(token, now_ms);
        self.verdicts.new_stream();
    }

    pub fn on_stream_message(&mut self, token: u32, size: usize, now_ms: i64) {
        if !self.supervisor.message(token, now_ms) {
            return;
        }
        let Some(bytes) = host::grpc_receive_buffer(size) else {
            return;
        };
        match acceptance::decode_message(&bytes) {
            Ok(message) => {
                if let Some(pb::subscribe_response::Kind::Snapshot(snapshot)) = message.kind {
                    self.apply(&snapshot, now_ms);
                }
            }
            // The version of what did not decode is unknown: NACKed as version 0.
            Err(why) => self.reject(0, &why, now_ms),
        }
        // A new verdict goes out now, not at the next tick.
        self.maybe_report(now_ms);
    }

    fn reject(&mut self, version: u64, why: &Rejection, now_ms: i64) {
        host::log(
            LogLevel::Error,
            &format!(
                "rejected snapshot v{version}: {why}; keeping v{}",
                self.verdicts.applied()
            ),
        );
        self.verdicts.rejected(version, why, now_ms);
    }

    /// Checks, publishes and records the verdict on `snapshot`.
    fn apply(&mut self, snapshot: &pb::Snapshot, now_ms: i64) {
        if let Err(why) = acceptance::check(snapshot, self.verdicts.stream_version()) {
            self.reject(snapshot.version, &why, now_ms);
            return;
        }
        // Table first, then the version readers poll: a reader never pins an old table to a new
        // version (see cache.rs).
        let table = snapshot.encode_to_vec();
        if let Err(status) = host::set_shared_data(cache::TABLE_KEY, &table) {
            let why = Rejection::Publish(format!("{status:?}"));
            self.reject(snapshot.version, &why, now_ms);
            return;
        }
        if let Err(status) =
            host::set_shared_data(cache::VERSION_KEY, &encode_version(snapshot.version))
        {
            let why = Rejection::Publish(format!("{status:?}"));
            self.reject(snapshot.version, &why, now_ms);
            return;
        }
        if snapshot.version != self.verdicts.applied() {
            host::log(
                LogLevel::Info,
                &format!(
                    "applied snapshot v{} ({} pools, {} bytes)",
                    snapshot.version,
                    snapshot.pools.len(),
                    table.len()
                ),
            );
        }
        self.verdicts.accepted(snapshot.version, now_ms);
    }

    pub fn on_stream_close(&mut self, token: u32, status: u32, now_ms: i64) {
        if self.supervisor.stream_token() != Some(token) {
            return;
        }
        let detail = hostcalls::get_grpc_status()
            .ok()
            .and_then(|(_, msg)| msg)
            .unwrap_or_default();
        if status == GRPC_UNAUTHENTICATED {
            host::log(
                LogLevel::Error,
                &format!("control plane rejected the push token: {detail}"),
            );
        } else {
            host::log(
                LogLevel::Warn,
                &format!("control-plane stream closed (grpc status {status}) {detail}; reconnecting with backoff"),
            );
        }
        self.supervisor.closed(token, now_ms);
    }

    pub fn on_queue_ready(&mut self, queue_id: u32) {
        if Some(queue_id) != self.queue_id {
            return;
        }
        // Bounded drain: the queue cannot make us loop forever.
        for _ in 0..PENDING_CAP {
            match hostcalls::dequeue_shared_queue(queue_id) {
                Ok(Some(bytes)) => {
                    // Each message is one worker's batch (filter_core::outbox).
                    for outcome in outbox::decode(&bytes).unwrap_or_default() {
                        if self.pending.len() >= PENDING_CAP {
                            self.pending.pop_front();
                            self.dropped_outcomes = self.dropped_outcomes.saturating_add(1);
                        }
                        self.pending.push_back(outcome);
                    }
                }
                _ => break,
            }
        }
    }

    fn report_interval_ms(&self) -> i64 {
        i64::try_from(self.cfg.report_interval_ms).unwrap_or(i64::MAX)
    }

    fn maybe_report(&mut self, now_ms: i64) {
        if self.report_in_flight.is_some() {
            return;
        }
        let interval_passed =
            now_ms.saturating_sub(self.last_report_ms) >= self.report_interval_ms();
        let outcomes_due = !self.pending.is_empty()
            && (interval_passed || self.pending.len() >= self.cfg.report_batch_max);
        if !outcomes_due && !self.verdicts.due(now_ms) {
            return;
        }
        let Some(auth) = self.auth_metadata() else {
            return;
        };
        let count = self.pending.len().min(self.cfg.report_batch_max);
        let statuses = self.verdicts.to_report();
        let batch = pb::ReportBatch {
            node_id: self.cfg.node_id.clone(),
            outcomes: self.pending.iter().take(count).cloned().collect(),
            snapshot_statuses: statuses.clone(),
        };
        let target = self.grpc_target();
        match hostcalls::dispatch_grpc_call(
            &target,
            codexmesh_proto::names::MESH_SERVICE,
            codexmesh_proto::names::REPORT_METHOD,
            vec![("authorization", auth.as_bytes())],
            Some(&batch.encode_to_vec()),
            REPORT_TIMEOUT,
        ) {
            Ok(token) => {
                self.report_in_flight = Some(InFlight {
                    token,
                    outcomes: count,
                    statuses,
                })
            }
            Err(status) => {
                host::log(LogLevel::Warn, &format!("cannot send report: {status:?}"));
                self.verdicts
                    .failed(now_ms.saturating_add(self.report_interval_ms()));
            }
        }
        self.last_report_ms = now_ms;
    }

    pub fn on_report_response(&mut self, token: u32, status: u32) {
        if self
            .report_in_flight
            .as_ref()
            .is_none_or(|f| f.token != token)
        {
            return;
        }
        let Some(sent) = self.report_in_flight.take() else {
            return;
        };
        if status == 0 {
            // Delivered: drop what was sent (new records were appended behind it).
            for _ in 0..sent.outcomes {
                self.pending.pop_front();
            }
            self.verdicts.delivered(&sent.statuses);
        } else {
            let retry_at = host::now_ms().saturating_add(self.report_interval_ms());
            self.verdicts.failed(retry_at);
            host::log(
                LogLevel::Warn,
                &format!("report failed (grpc status {status}); will retry"),
            );
        }
    }
}
