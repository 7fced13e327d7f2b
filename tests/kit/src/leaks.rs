//! The leak scan: nothing a test run leaves behind may hold a secret or a prompt.
//!
//! Rules this module keeps:
//! - **On only when asked.** `CODEXMESH_LEAK_SCAN_DIR` (set by `scripts/test.sh`) turns the scan
//!   on; without it every hook is a no-op and local runs pay nothing.
//! - **Scanned where it lives, before it goes.** Test directories are scanned as they are
//!   deleted ([`TestDir`]), process logs as their process is reaped ([`crate::Proc`]), Envoy's
//!   `/config_dump` and stats and the control plane's `/metrics` while they still answer, a
//!   PostgreSQL cluster's data files after it stops. Nothing is copied, so the scan costs no disk.
//! - **What is scanned.** Logs (`*.log`), databases (`*.db`, `-wal`, `-shm`, every file of a
//!   PostgreSQL data directory), rendered configs (`*.yaml`, `*.yml`), admin dumps and the suite's
//!   artifacts (`target/test-artifacts`). Not scanned: the credential files a test hands to the
//!   gateway or to a client (`auth.json`, `.credentials.json`, `oauth_creds.json`, the clients'
//!   homes), which hold secrets by design: they are the input, not something the gateway wrote.
//! - **Recognised by shape, or remembered.** Secrets are found by their shapes (pool keys
//!   `cmk_`, API tokens `cma_`, bootstrap tokens `cmb_`, invite codes `cmi_`, webhook secrets
//!   `whsec_`, Codex JWTs and `rt_` refresh tokens, Anthropic `sk-ant-` tokens, Google `ya29.` and
//!   `1//0` tokens, the prompt canary in [`crate::turn_body`]) and by value when a test hands one
//!   to [`remember`] (passwords, TOTP secrets, prompts).
//! - **A finding never repeats the secret.** It names the file, the kind, the first four
//!   characters and the length.
//! - **Never panics.** A hook that cannot read something records that and moves on.

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// Text put into every prompt the kit builds (`turn_body`'s instructions): if it turns up in
/// anything the gateway wrote, prompt text was stored.
pub const PROMPT_CANARY: &str = "zq-prompt-canary-5e1d";

/// Files above this size are scanned only in their first part (a database larger than this is
/// not made by a test).
const MAX_SCAN_BYTES: u64 = 256 * 1024 * 1024;

/// One thing found that must not be there. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    /// The first characters of the match and its length (`cmk_… (44 chars)`).
    pub hint: String,
}

/// A shape: a literal prefix followed by at least `min_tail` characters of the token alphabet.
struct Shape {
    kind: &'static str,
    prefix: &'static [u8],
    min_tail: usize,
    /// The byte before the prefix must not be a token character (so `start_time` is no `rt_`).
    word_start: bool,
}

const SHAPES: &[Shape] = &[
    Shape {
        kind: "pool key",
        prefix: b"cmk_",
        min_tail: 20,
        word_start: true,
    },
    Shape {
        kind: "API token",
        prefix: b"cma_",
        min_tail: 20,
        word_start: true,
    },
    Shape {
        kind: "bootstrap token",
        prefix: b"cmb_",
        min_tail: 20,
        word_start: true,
    },
    Shape {
        kind: "invite code",
        prefix: b"cmi_",
        min_tail: 20,
        word_start: true,
    },
    Shape {
        kind: "webhook secret",
        prefix: b"whsec_",
        min_tail: 20,
        word_start: true,
    },
    Shape {
        kind: "refresh token",
        prefix: b"rt_",
        min_tail: 16,
        word_start: true,
    },
    Shape {
        kind: "Anthropic token",
        prefix: b"sk-ant-",
        min_tail: 30,
        word_start: true,
    },
    Shape {
        kind: "Google access token",
        prefix: b"ya29.",
        min_tail: 30,
        word_start: true,
    },
    Shape {
        kind: "Google refresh token",
        prefix: b"1//0",
        min_tail: 30,
        word_start: true,
    },
    Shape {
        kind: "prompt text",
        prefix: PROMPT_CANARY.as_bytes(),
        min_tail: 0,
        word_start: false,
    },
];

fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn hint(matched: &[u8]) -> String {
    let head: String = matched.iter().take(4).map(|&b| b as char).collect();
    format!("{head}… ({} chars)", matched.len())
}

/// A JWT: `eyJ<b64url>.eyJ<b64url>.<b64url>`, the shape of Codex access and ID tokens.
fn jwt_at(bytes: &[u8], start: usize) -> Option<usize> {
    let run = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            .count()
    };
    let header = run(start);
    if header < 10 || bytes.get(start + header) != Some(&b'.') {
        return None;
    }
    let payload_start = start + header + 1;
    if !bytes[payload_start..].starts_with(b"eyJ") {
        return None;
    }
    let payload = run(payload_start);
    if payload < 10 || bytes.get(payload_start + payload) != Some(&b'.') {
        return None;
    }
    let sig_start = payload_start + payload + 1;
    let sig = run(sig_start);
    (sig >= 10).then_some(sig_start + sig)
}

/// Every secret shape and remembered value in `bytes`.
pub fn scan_bytes(bytes: &[u8], remembered: &[String]) -> Vec<Finding> {
    let mut found = Vec::new();
    for shape in SHAPES {
        let mut from = 0;
        while let Some(pos) = find(&bytes[from..], shape.prefix).map(|p| p + from) {
            from = pos + shape.prefix.len();
            if shape.word_start && pos > 0 && token_char(bytes[pos - 1]) {
                continue;
            }
            let tail = bytes[from..].iter().take_while(|&&b| token_char(b)).count();
            if tail >= shape.min_tail {
                found.push(Finding {
                    kind: shape.kind,
                    hint: hint(&bytes[pos..from + tail]),
                });
                from += tail;
            }
        }
    }
    let mut from = 0;
    while let Some(pos) = find(&bytes[from..], b"eyJ").map(|p| p + from) {
        from = pos + 3;
        if pos > 0 && token_char(bytes[pos - 1]) {
            continue;
        }
        if let Some(end) = jwt_at(bytes, pos) {
            found.push(Finding {
                kind: "JWT (access or ID token)",
                hint: hint(&bytes[pos..end]),
            });
            from = end;
        }
    }
    for value in remembered {
        if value.len() >= 8 && find(bytes, value.as_bytes()).is_some() {
            found.push(Finding {
                kind: "remembered secret",
                hint: hint(value.as_bytes()),
            });
        }
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where findings go, when the scan is on.
pub fn scan_dir() -> Option<PathBuf> {
    std::env::var_os("CODEXMESH_LEAK_SCAN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn append(file: &str, line: &str) {
    let Some(dir) = scan_dir() else { return };
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))
    {
        // One write per line: appends from several test threads do not interleave.
        let _ = f.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes());
    }
}

/// Hands a secret to the scan by value (a password, a TOTP secret, a prompt): any artifact that
/// holds it afterwards is a finding. Stored in the scan directory only (never printed); a no-op
/// when the scan is off.
pub fn remember(secret: &str) {
    if scan_dir().is_some() && secret.len() >= 8 && !secret.contains('\n') {
        append("remembered.txt", secret);
    }
}

fn remembered() -> Vec<String> {
    scan_dir()
        .and_then(|d| std::fs::read_to_string(d.join("remembered.txt")).ok())
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn test_name() -> String {
    let exe = std::env::current_exe().ok();
    let exe = exe
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let thread = std::thread::current().name().unwrap_or("main").to_string();
    format!("{exe}::{thread}")
}

/// Scans text the kit fetched (an admin dump) and records what it saw. `origin` names it for
/// the report (`envoy /config_dump`).
pub fn scan_text(origin: &str, text: &[u8]) {
    if scan_dir().is_none() {
        return;
    }
    record(
        origin,
        "",
        text.len() as u64,
        &scan_bytes(text, &remembered()),
    );
}

/// Notes that something meant to be scanned could not be read (an Envoy that already exited).
pub fn unreadable(origin: &str, why: &str) {
    append("errors.tsv", &format!("{origin}\t{}\t{why}", test_name()));
}

/// Scans one file (a process log) if it still exists.
pub fn scan_file(origin: &str, path: &Path) {
    if scan_dir().is_none() || !path.exists() {
        return;
    }
    let bytes = read_bounded(path);
    let findings = scan_bytes(&bytes, &remembered());
    record(
        origin,
        &path.display().to_string(),
        bytes.len() as u64,
        &findings,
    );
}

fn record(origin: &str, file: &str, bytes: u64, findings: &[Finding]) {
    append(
        "scanned.tsv",
        &format!("{origin}\t{}\t{file}\t{bytes}", test_name()),
    );
    for f in findings {
        append(
            "findings.tsv",
            &format!("{origin}\t{}\t{file}\t{}\t{}", test_name(), f.kind, f.hint),
        );
    }
}

/// What a directory walk scans: logs, databases and rendered configs, never the credential
/// files a test hands in (see the module rules).
pub fn is_scanned_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [
        ".log", ".db", ".db-wal", ".db-shm", ".yaml", ".yml", ".tsv", ".txt", ".html",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// Directories a walk does not enter: the clients' homes and installed packages.
fn is_skipped_dir(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    matches!(
        name.as_str(),
        "node_modules" | ".venv" | "codex-home" | ".codex" | ".claude" | ".gemini"
    )
}

/// Scans the files under `root` that `select` admits; `origin` names the kind of place for the
/// report (`test dir`, `postgres data`). Returns the findings (also recorded).
pub fn scan_tree(origin: &str, root: &Path, select: &dyn Fn(&Path) -> bool) -> Vec<Finding> {
    let remembered = remembered();
    let mut all = Vec::new();
    let complete = walk(root, select, &mut |path, bytes| {
        let findings = scan_bytes(bytes, &remembered);
        record(
            origin,
            &path.display().to_string(),
            bytes.len() as u64,
            &findings,
        );
        all.extend(findings);
    });
    if !complete {
        append(
            "errors.tsv",
            &format!("{origin}\t{}\ttoo many files", root.display()),
        );
    }
    all
}

/// Hands every file under `root` that `select` admits (read up to [`MAX_SCAN_BYTES`]) to
/// `visit`, without entering the clients' homes and packages; false when it stopped at its bound
/// of 200,000 entries.
fn walk(root: &Path, select: &dyn Fn(&Path) -> bool, visit: &mut dyn FnMut(&Path, &[u8])) -> bool {
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > 200_000 {
                return false;
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !is_skipped_dir(&path) {
                    stack.push(path);
                }
            } else if kind.is_file() && select(&path) {
                visit(&path, &read_bounded(&path));
            }
        }
    }
    true
}

fn read_bounded(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_SCAN_BYTES).read_to_end(&mut out);
    }
    out
}

/// A test's temporary directory that is scanned (when the scan is on) just before it is
/// deleted. Derefs to the [`tempfile::TempDir`] it wraps.
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    pub fn new(dir: tempfile::TempDir) -> Self {
        Self(dir)
    }
}

impl Deref for TestDir {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if scan_dir().is_some() {
            scan_tree("test dir", self.0.path(), &is_scanned_file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        scan_bytes(text.as_bytes(), &[])
            .into_iter()
            .map(|f| f.kind)
            .collect()
    }

    #[test]
    fn every_secret_shape_is_found() {
        let key = format!("cmk_{}", "a1B2".repeat(10));
        assert_eq!(kinds(&format!("key={key} ok")), ["pool key"]);
        assert_eq!(
            kinds(&format!("\"{}\"", format_args!("cma_{}", "x".repeat(30)))),
            ["API token"]
        );
        assert_eq!(kinds(&format!("rt_{}", "Z".repeat(48))), ["refresh token"]);
        assert_eq!(kinds("refresh=rt_n0nce123_secret4567"), ["refresh token"]);
        assert_eq!(
            kinds(&format!("sk-ant-oat01-{}", "q".repeat(90))),
            ["Anthropic token"]
        );
        assert_eq!(
            kinds(&format!("ya29.a0{}", "q".repeat(100))),
            ["Google access token"]
        );
        assert_eq!(
            kinds(&format!("1//0{}", "q".repeat(100))),
            ["Google refresh token"]
        );
        assert_eq!(
            kinds(&format!("whsec_{}", "k".repeat(32))),
            ["webhook secret"]
        );
        assert_eq!(kinds(&format!("x {PROMPT_CANARY} y")), ["prompt text"]);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz";
        assert_eq!(
            kinds(&format!("Bearer {jwt}")),
            ["JWT (access or ID token)"]
        );
    }

    #[test]
    fn words_that_merely_contain_a_prefix_are_not_secrets() {
        assert!(kinds("start_time=12 part_of the cmk_ prefix, cmk_short, eyJ alone").is_empty());
        assert!(kinds("a key prefix cmk_abcd1234 shown in lists").is_empty());
    }

    #[test]
    fn remembered_values_are_found_and_never_echoed() {
        let found = scan_bytes(
            b"user=admin password=hunter2-hunter2",
            &["hunter2-hunter2".into()],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, "remembered secret");
        assert!(!found[0].hint.contains("hunter2-hunter2"));
    }

    #[test]
    fn a_walk_scans_logs_and_databases_but_not_handed_in_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let secret = format!("rt_{}", "s".repeat(48));
        std::fs::write(dir.path().join("serve.log"), format!("leaked {secret}")).unwrap();
        std::fs::write(
            dir.path().join("auth.json"),
            format!("{{\"r\":\"{secret}\"}}"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("node_modules")).unwrap();
        std::fs::write(dir.path().join("node_modules/x.log"), &secret).unwrap();
        // `walk`, not `scan_tree`: this planted secret must not land in the suite's own scan.
        let mut found = Vec::new();
        let mut files = 0;
        assert!(walk(dir.path(), &is_scanned_file, &mut |_, bytes| {
            files += 1;
            found.extend(scan_bytes(bytes, &[]));
        }));
        assert_eq!((files, found.len()), (1, 1), "{found:?}");
    }
}
