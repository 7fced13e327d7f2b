//! Safe wrappers over `proxy_wasm::hostcalls`: every host error becomes a `None`/`Err` the caller
//! handles. The SDK's trait helpers unwrap host errors, and a panic would kill the VM.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status};

pub fn log(level: LogLevel, message: &str) {
    // Nowhere left to report a failed log call.
    let _ = hostcalls::log(level, message);
}

pub fn now_ms() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// Every request header (pseudo-headers included) in one host call.
pub fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
}

pub fn remove_request_header(name: &str) -> Result<(), Status> {
    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
}

pub fn response_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

pub fn response_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpResponseHeaders).unwrap_or_default()
}

pub fn send_response(status: u16, headers: &[(&str, String)], body: &str) -> Result<(), Status> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    hostcalls::send_http_response(u32::from(status), headers, Some(body.as_bytes()))
}

pub fn shared_data(key: &str) -> Option<Vec<u8>> {
    hostcalls::get_shared_data(key).ok().and_then(|(v, _)| v)
}

pub fn set_shared_data(key: &str, value: &[u8]) -> Result<(), Status> {
    hostcalls::set_shared_data(key, Some(value), None)
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    hostcalls::set_property(path.to_vec(), Some(value))
}

pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

pub fn grpc_receive_buffer(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
        .ok()
        .flatten()
}

pub fn set_tick_period(ms: u64) -> Result<(), Status> {
    hostcalls::set_tick_period(Duration::from_millis(ms))
}

/// Read-modify-write of a shared-data value with compare-and-swap, retried a bounded number of
/// times against writers on other workers. `update` gets the current bytes (empty when unset).
pub fn update_shared_data<F>(key: &str, mut update: F) -> bool
where
    F: FnMut(&[u8]) -> Vec<u8>,
{
    for _ in 0..8 {
        let (current, cas) = match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => (value.unwrap_or_default(), cas),
            Err(_) => return false,
        };
        let next = update(&current);
        match hostcalls::set_shared_data(key, Some(&next), cas) {
            Ok(()) => return true,
            Err(Status::CasMismatch) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Like [`update_shared_data`], but `decide` may refuse (nothing is written then): `None` when
/// the host failed or other writers kept winning, else what `decide` said.
pub fn decide_shared_data<T, E, F>(key: &str, mut decide: F) -> Option<Result<T, E>>
where
    F: FnMut(&[u8]) -> Result<(Vec<u8>, T), E>,
{
    for _ in 0..8 {
        let (current, cas) = match hostcalls::get_shared_data(key) {
            Ok((value, cas)) => (value.unwrap_or_default(), cas),
            Err(_) => return None,
        };
        let (next, decided) = match decide(&current) {
            Ok(write) => write,
            Err(refused) => return Some(Err(refused)),
        };
        match hostcalls::set_shared_data(key, Some(&next), cas) {
            Ok(()) => return Some(Ok(decided)),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

pub fn set_response_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value))
}

pub fn remove_response_header(name: &str) -> Result<(), Status> {
    hostcalls::remove_map_value(MapType::HttpResponseHeaders, name)
}

pub fn response_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
        .ok()
        .flatten()
}

pub fn replace_response_body(size: usize, body: &[u8]) -> Result<(), Status> {
    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, body)
}

/// Replaces the first `size` bytes of the (buffered) request body.
pub fn replace_request_body(size: usize, body: &[u8]) -> Result<(), Status> {
    hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, body)
}

/// `len` bytes of the (buffered) request body from `start`: only they are copied into the VM.
pub fn request_body_range(start: usize, len: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpRequestBody, start, len)
        .ok()
        .flatten()
}

/// Makes Envoy choose the request's route again (after a header the route reads was set). Envoy
/// registers this as the foreign function `clear_route_cache`; a host without it keeps the route
/// it has, which the caller cannot fix, so the status is not returned.
pub fn clear_route_cache() {
    let _ = hostcalls::call_foreign_function("clear_route_cache", None);
}
