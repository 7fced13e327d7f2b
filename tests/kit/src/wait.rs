//! Bounded waits: poll a probe until it reports ready, or fail after a deadline with what the
//! probe saw last.
//!
//! Rules: nothing in the kit waits without a deadline; a probe that returns an error ends the
//! wait at once (a process that died will not become ready); the timeout error names what was
//! awaited, the limit and the last state.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// One look of a probe.
pub enum Probe<T> {
    /// Done, with the value.
    Ready(T),
    /// Not yet; the state seen (for the timeout message).
    NotYet(String),
}

/// Polls `probe` every `every` until it is [`Probe::Ready`]; fails after `within`.
pub fn until<T>(
    within: Duration,
    every: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Probe<T>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        let state = match probe()? {
            Probe::Ready(v) => return Ok(v),
            Probe::NotYet(state) => state,
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?}; last seen: {state}");
        }
        std::thread::sleep(every);
    }
}

/// [`until`] for an async probe (sleeps on the tokio timer).
pub async fn until_async<T, F, Fut>(
    within: Duration,
    every: Duration,
    what: &str,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Probe<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        let state = match probe().await? {
            Probe::Ready(v) => return Ok(v),
            Probe::NotYet(state) => state,
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?}; last seen: {state}");
        }
        tokio::time::sleep(every).await;
    }
}
