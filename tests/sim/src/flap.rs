//! Connection-level failure injection: an upstream that flaps, and connection resets.
//!
//! - [`Flap`] (knob `flap`): each listed account cycles through [`FlapStep`]s (a plain answer,
//!   a 429, a reset connection), each held `step_ms` of real time; account `i` runs `i` steps
//!   ahead of the first, so with as many accounts as steps each step is held by exactly one
//!   account at any moment. Codex HTTP turns only; queued `fail_next` entries come first.
//! - A reset ([`crate::state::FailMode::Reset`], from `fail_next` or a flap): the answer never
//!   reaches the wire; the connection is closed with a TCP RST (`SO_LINGER` 0) before any byte
//!   of it was written. Plain HTTP only: [`ResetListener`] hands each handler the
//!   [`ConnReset`] of its connection; over HTTPS (no handle) the request gets a 502 instead.
//!
//! Rules: the flap's schedule is a pure function of the clock (no state to drift), a reset
//! touches only its own connection, and every other connection of the listener behaves as a
//! plain `TcpStream` (Nagle off, as SSE needs).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::response::Response;
use axum::serve::IncomingStream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::state::{FailMode, InjectedFailure};

/// One step of a flapping account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlapStep {
    /// Answered normally.
    Ok,
    /// `429 rate_limit_exceeded` with `retry-after: 1`.
    RateLimited,
    /// The connection is reset before any answer byte.
    Reset,
}

/// Accounts that flap between answering, 429 and resets (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flap {
    /// The flapping accounts; others are not affected.
    pub account_ids: Vec<String>,
    /// The steps, in order, repeated.
    pub cycle: Vec<FlapStep>,
    /// How long each step lasts (real milliseconds, ≥ 1).
    pub step_ms: u64,
}

impl Flap {
    /// Why a flap cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.cycle.is_empty() {
            return Err("flap.cycle must name at least one step".into());
        }
        if self.step_ms == 0 {
            return Err("flap.step_ms must be ≥ 1".into());
        }
        Ok(())
    }

    /// The step `account` is in at `now_ms` (unix ms), if it flaps.
    pub fn step_at(&self, account: &str, now_ms: u64) -> Option<FlapStep> {
        let index = self.account_ids.iter().position(|a| a == account)?;
        let len = self.cycle.len();
        if len == 0 || self.step_ms == 0 {
            return None;
        }
        let tick = usize::try_from(now_ms / self.step_ms).unwrap_or(0);
        self.cycle.get(tick.wrapping_add(index) % len).copied()
    }

    /// The failure a Codex turn of `account` meets now, if any.
    pub fn failure_now(&self, account: &str) -> Option<InjectedFailure> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let (status, mode, headers) = match self.step_at(account, now_ms)? {
            FlapStep::Ok => return None,
            FlapStep::RateLimited => (
                429,
                FailMode::Http,
                [("retry-after".to_string(), "1".to_string())].into(),
            ),
            FlapStep::Reset => (502, FailMode::Reset, Default::default()),
        };
        Some(InjectedFailure {
            status,
            body: None,
            account_id: Some(account.to_string()),
            path_contains: None,
            headers,
            mode,
        })
    }
}

/// The reset switch of one accepted connection (what a handler flips to reset it).
#[derive(Debug, Clone)]
pub struct ConnReset(Arc<AtomicBool>);

impl ConnReset {
    /// The handle in a request's extensions, when the listener gave one.
    pub fn of(extensions: &axum::http::Extensions) -> Option<Self> {
        extensions
            .get::<ConnectInfo<ConnReset>>()
            .map(|c| c.0.clone())
    }

    /// Resets the connection: nothing more is read or written on it, and it closes with RST.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Connected<IncomingStream<'_, ResetListener>> for ConnReset {
    fn connect_info(stream: IncomingStream<'_, ResetListener>) -> Self {
        ConnReset(stream.io().reset.clone())
    }
}

/// The answer of a reset request: the switch flipped (the 502 never reaches the wire; the
/// request log records it), or a plain 502 where the connection has no switch (HTTPS).
pub fn reset_answer(conn: Option<&ConnReset>) -> Response {
    match conn {
        Some(c) => {
            c.trigger();
            crate::errors::detail(502, "connection reset by the simulator")
        }
        None => crate::errors::detail(502, "injected reset (as a 502: no reset over HTTPS)"),
    }
}

/// A plain TCP listener whose connections can be reset by their handlers.
#[derive(Debug)]
pub struct ResetListener {
    inner: TcpListener,
}

impl ResetListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl axum::serve::Listener for ResetListener {
    type Io = ResetIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small SSE chunks must leave at once.
                    let _ = stream.set_nodelay(true);
                    let io = ResetIo {
                        inner: stream,
                        reset: Arc::new(AtomicBool::new(false)),
                    };
                    return (io, addr);
                }
                // Out of descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection of a [`ResetListener`].
#[derive(Debug)]
pub struct ResetIo {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ResetIo {
    /// `Err(ConnectionReset)` once the switch is flipped (and the socket set to close with
    /// RST when the server drops it, which it does on that error).
    fn check(&self) -> io::Result<()> {
        if self.reset.load(Ordering::Acquire) {
            let _ = self.inner.set_zero_linger();
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        Ok(())
    }
}

impl AsyncRead for ResetIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flap() -> Flap {
        Flap {
            account_ids: vec!["a".into(), "b".into(), "c".into()],
            cycle: vec![FlapStep::Ok, FlapStep::RateLimited, FlapStep::Reset],
            step_ms: 100,
        }
    }

    #[test]
    fn accounts_run_one_step_apart_so_one_is_always_ok() {
        let f = flap();
        for now in (0..2_000).step_by(7) {
            let steps: Vec<FlapStep> = ["a", "b", "c"]
                .iter()
                .map(|a| f.step_at(a, now).unwrap())
                .collect();
            assert_eq!(
                steps.iter().filter(|s| **s == FlapStep::Ok).count(),
                1,
                "{now}: {steps:?}"
            );
        }
        assert_eq!(f.step_at("a", 0), Some(FlapStep::Ok));
        assert_eq!(f.step_at("a", 150), Some(FlapStep::RateLimited));
        assert_eq!(f.step_at("b", 0), Some(FlapStep::RateLimited));
        assert_eq!(f.step_at("a", 250), Some(FlapStep::Reset));
        assert_eq!(f.step_at("other", 0), None);
    }

    #[test]
    fn a_flap_without_steps_or_duration_is_refused() {
        let mut f = flap();
        f.step_ms = 0;
        assert!(f.check().is_err());
        assert_eq!(f.step_at("a", 5), None);
        let mut f = flap();
        f.cycle.clear();
        assert!(f.check().is_err());
        assert!(flap().check().is_ok());
    }
}
