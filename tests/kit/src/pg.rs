//! A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, `pg_ctl start` on a free
//! 127.0.0.1 port with the unix socket in that dir, stopped (immediate) and deleted on drop.
//! A drill may stop it and start it again on the same data dir and port
//! ([`TempPostgres::stop`], [`TempPostgres::restart`]) and read it with `psql`
//! ([`TempPostgres::query_scalar`]).
//! As root the server runs as the `postgres` user (`runuser`), since PostgreSQL refuses root.
//!
//! Rules: a missing PostgreSQL skips (with a note) only when nobody requires it; under
//! `CODEXMESH_REQUIRE_POSTGRES=1` (set by scripts/test.sh, whose setup installs PostgreSQL) it is
//! an error. The cluster listens on loopback only (trust authentication) and is stopped through
//! `pg_ctl -D <its data dir>`, which signals exactly its own postmaster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

pub struct TempPostgres {
    /// `postgres://cm@127.0.0.1:PORT/postgres` (trust authentication, loopback only).
    pub url: String,
    data: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    /// `pg_ctl start`'s server options (port, socket dir), kept for a restart.
    server_opts: String,
    // Last: removed after the server is stopped.
    _dir: tempfile::TempDir,
}

/// The directory with `initdb` and `pg_ctl`: `CODEXMESH_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else the one on PATH.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CODEXMESH_TEST_PG_BIN") {
        let d = PathBuf::from(d);
        return d.join("initdb").exists().then_some(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

impl TempPostgres {
    /// Starts a cluster, or returns None (after printing a note) when no PostgreSQL binaries
    /// exist on this machine. Under `CODEXMESH_REQUIRE_POSTGRES=1` (set by scripts/test.sh, whose
    /// setup installs PostgreSQL) a missing PostgreSQL is an error, not a silent skip.
    pub fn start() -> Result<Option<Self>> {
        let required = std::env::var("CODEXMESH_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        let skip = |why: &str| -> Result<Option<Self>> {
            if required {
                bail!("PostgreSQL is required here (CODEXMESH_REQUIRE_POSTGRES=1) but {why}");
            }
            eprintln!("note: {why}: Postgres tests SKIPPED");
            Ok(None)
        };
        let Some(bin) = find_bin_dir() else {
            return skip(
                "no PostgreSQL server binaries (initdb, pg_ctl) were found (install the Debian \
                 package `postgresql`)",
            );
        };
        let dir = tempfile::Builder::new().prefix("codexmesh-pg-").tempdir()?;
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = if root {
            let user = "postgres";
            let name = std::ffi::CString::new(user)?;
            // SAFETY: getpwnam(3) with a valid C string; the result is read at once.
            let pw = unsafe { libc::getpwnam(name.as_ptr()) };
            if pw.is_null() {
                return skip("this runs as root and there is no `postgres` user");
            }
            // SAFETY: pw is non-null and points at getpwnam's static record.
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            Some(user.to_owned())
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut pg = Self {
            url: String::new(),
            data,
            bin,
            run_as,
            server_opts: String::new(),
            _dir: dir,
        };
        let dir_path = pg._dir.path().to_path_buf();
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-U",
                "cm",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let port = crate::net::free_port()?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c \
             synchronous_commit=off -c full_page_writes=off -c max_connections=60",
            dir_path.display()
        );
        pg.server_opts = opts;
        pg.start_server()?;
        pg.url = format!("postgres://cm@127.0.0.1:{port}/postgres");
        Ok(Some(pg))
    }

    /// `pg_ctl start` on this cluster's data dir, port and socket dir (waits until it accepts
    /// connections, at most 60 s).
    fn start_server(&self) -> Result<()> {
        let log = self._dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &self.server_opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server (`-m fast`: open connections are closed, committed data stays) and
    /// waits until it is down. The data dir and port are kept for [`TempPostgres::restart`].
    pub fn stop(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        )
    }

    /// Starts the stopped server again on the same data dir and port.
    pub fn restart(&self) -> Result<()> {
        self.start_server()
    }

    /// The first column of the first row of `sql` run with `psql` on database `db` (text).
    pub fn query_scalar(&self, db: &str, sql: &str) -> Result<String> {
        let port = self.port()?;
        let out = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "cm", "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .current_dir(Path::new("/"))
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn port(&self) -> Result<String> {
        Ok(self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .ok_or_else(|| anyhow!("no port in url"))?
            .to_owned())
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(Path::new("/"))
            .stdin(std::process::Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "{tool} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A fresh database in this cluster (tests that need their own).
    pub fn url_for(&self, db: &str) -> String {
        self.url.replace("/postgres", &format!("/{db}"))
    }

    /// `CREATE DATABASE name` through the server's own `createdb`.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let port = self.port()?;
        self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "cm", name],
        )?;
        Ok(self.url_for(name))
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Stops exactly this cluster's postmaster (pg_ctl signals the PID in its data dir).
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "20",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(50));
        // Every data file, once the cluster has stopped (tables, WAL, its log).
        crate::leaks::scan_tree("postgres data", &self.data, &|_| true);
    }
}
