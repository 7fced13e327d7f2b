//! The codexmesh proxy-wasm module. One module, three roles picked by plugin configuration (all in
//! `vm_id: codexmesh` so they share data): the bootstrap singleton `service`, the listener
//! `downstream` filter and the cluster `upstream` filter. Decisions live in
//! `codexmesh-filter-core`; this crate only talks to the host.

mod cache;
mod downstream;
mod host;
mod limits;
mod metrics;
mod report;
mod service;
mod translation;
mod upstream;

use codexmesh_filter_core::config::{self, Role};
use codexmesh_filter_core::outbox;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

/// The VM id every codexmesh plugin must use; shared data and queues are scoped by it.
pub const VM_ID: &str = codexmesh_proto::names::VM_ID;
/// Shared queue carrying encoded `Outcome`s from the filters to the service.
pub const OUTCOME_QUEUE: &str = "codexmesh.outcomes";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    role: Option<Role>,
    service: Option<service::Service>,
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _size: usize) {
        if let Some(service) = self.service.as_mut() {
            service.on_report_response(token_id, status_code);
        }
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if let Some(service) = self.service.as_mut() {
            service.on_stream_message(token_id, message_size, host::now_ms());
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if let Some(service) = self.service.as_mut() {
            service.on_stream_close(token_id, status_code, host::now_ms());
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::plugin_configuration().unwrap_or_default();
        let role = match config::parse(&bytes) {
            Ok(role) => role,
            Err(err) => {
                host::log(LogLevel::Error, &err.to_string());
                return false;
            }
        };
        if matches!(role, Role::Upstream(_) | Role::Downstream(_)) {
            // This worker's outcome outbox is flushed on the tick (filter_core::outbox); the
            // listener's carries its policy refusals.
            let period = u64::try_from(outbox::MAX_WAIT_MS).unwrap_or(100);
            if host::set_tick_period(period).is_err() {
                host::log(
                    LogLevel::Warn,
                    "no tick: outcomes wait for the next request",
                );
            }
        }
        if let Role::Service(cfg) = &role {
            // on_configure may run more than once: keep the stream we already have.
            match self.service.as_mut() {
                Some(service) => service.reconfigure(cfg.clone()),
                None => {
                    let mut service = service::Service::new(cfg.clone(), host::now_ms());
                    if !service.start(host::now_ms()) {
                        return false;
                    }
                    self.service = Some(service);
                }
            }
        }
        self.role = Some(role);
        true
    }

    fn on_tick(&mut self) {
        if let Some(service) = self.service.as_mut() {
            service.on_tick(host::now_ms());
        }
        if matches!(self.role, Some(Role::Upstream(_) | Role::Downstream(_))) {
            report::flush_outcomes(host::now_ms());
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(service) = self.service.as_mut() {
            service.on_queue_ready(queue_id);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None: a service root (never asked in practice) gets a no-op filter.
        Some(match self.role {
            Some(Role::Downstream(ref cfg)) => Box::new(downstream::Downstream::new(cfg.clone())),
            Some(Role::Upstream(ref cfg)) => Box::new(upstream::Upstream::new(cfg)),
            _ => Box::new(PassThrough),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PassThrough;
impl Context for PassThrough {}
impl HttpContext for PassThrough {}

/// Answers the client with a gateway error and stops the filter chain.
fn reply_error(err: &codexmesh_filter_core::errors::GatewayError) -> proxy_wasm::types::Action {
    if let Err(status) = host::send_response(err.status(), &err.headers(), &err.body()) {
        host::log(
            LogLevel::Error,
            &format!("could not send local reply ({status:?}) for {err}"),
        );
    }
    proxy_wasm::types::Action::Pause
}
