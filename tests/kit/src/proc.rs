//! Child processes the kit starts.
//!
//! Rules: a [`Proc`] is a child this process spawned and still owns; every signal goes to its
//! PID (never a name, never a group), and dropping it kills (SIGKILL) and reaps it. stdout and
//! stderr go to one log file in the test's directory (a fresh name, never overwriting an earlier
//! run's log). On drop the log's tail is printed to stderr, which the test harness shows only for
//! a failing test; programs that are not tests (the benchmarks) turn that off with
//! [`set_log_tails`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::wait::{self, Probe};

static LOG_TAILS: AtomicBool = AtomicBool::new(true);

/// Whether a dropped [`Proc`] prints its log's tail (default: yes).
pub fn set_log_tails(on: bool) {
    LOG_TAILS.store(on, Ordering::Relaxed);
}

/// The last 40 lines of `text`.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A child process killed (by its PID) when dropped; output goes to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

/// `dir/name.log`, or `dir/name-2.log`, ... when taken.
fn fresh_log(dir: &Path, name: &str) -> Result<(PathBuf, std::fs::File)> {
    for n in 1..1000 {
        let file = if n == 1 {
            format!("{name}.log")
        } else {
            format!("{name}-{n}.log")
        };
        let path = dir.join(file);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("no free log name for {name} in {}", dir.display())
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr to a fresh log file `log_dir/<name>.log` (stdin
    /// closed).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let (log, file) = fresh_log(log_dir, name)?;
        cmd.stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .stdin(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Sends `sig` to this child (an error when it was already reaped).
    pub fn signal(&self, sig: i32) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        // SAFETY: plain kill(2) on the PID of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            bail!("kill({pid}, {sig}) failed");
        }
        Ok(())
    }

    /// SIGSTOP: the process stays alive but answers nothing (a frozen control plane).
    pub fn freeze(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    pub fn thaw(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits (bounded) for the process to exit on its own; returns its wait status.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{name} was already reaped"))?;
        wait::until(
            within,
            Duration::from_millis(50),
            &format!("{name} to exit"),
            || {
                Ok(match child.try_wait()? {
                    Some(status) => Probe::Ready(status),
                    None => Probe::NotYet("still running".into()),
                })
            },
        )
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the exit code (-1 for a signal). A
    /// process still running after `within` is killed and the call fails.
    pub fn terminate(&mut self, within: Duration) -> Result<i32> {
        self.signal(libc::SIGTERM)?;
        match self.wait_exit(within) {
            Ok(status) => Ok(status.code().unwrap_or(-1)),
            Err(e) => {
                self.kill();
                Err(e.context(format!("{} ignored SIGTERM", self.name)))
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines containing `needle` (every line for `""`).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a log line containing `prefix`; returns the rest of that line after it.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        wait::until(
            timeout,
            Duration::from_millis(20),
            &format!("{} to print {prefix:?}", self.name),
            || {
                let text = self.log_text();
                if let Some(rest) = text
                    .lines()
                    .find_map(|l| l.find(prefix).map(|i| l[i + prefix.len()..].to_string()))
                {
                    return Ok(Probe::Ready(rest));
                }
                if !self.is_running() {
                    bail!("{} exited early:\n{}", self.name, tail(&text));
                }
                Ok(Probe::NotYet(format!("\n{}", tail(&text))))
            },
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        crate::leaks::scan_file("process log", &self.log);
        if LOG_TAILS.load(Ordering::Relaxed) {
            let text = self.log_text();
            if !text.is_empty() {
                eprintln!(
                    "---- {} ({}), last lines ----\n{}",
                    self.name,
                    self.log.display(),
                    tail(&text)
                );
            }
        }
    }
}
