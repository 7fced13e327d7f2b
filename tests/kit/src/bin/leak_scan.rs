//! `codexmesh-leak-scan`: the end of the suite's leak scan (`scripts/test.sh` runs it last).
//!
//! Rules: it scans the suite's artifact directory itself (every file), then reads what the
//! kit's hooks recorded while the tests ran (`scanned.tsv`, `findings.tsv`, `errors.tsv` in the
//! scan directory, see `codexmesh_test_kit::leaks`), prints a summary per kind of place, and
//! exits non-zero when anything was found, or when a kind of place named by `--expect` was never
//! scanned (a hook that stopped working must not pass as a clean scan). It never prints a secret:
//! findings hold only a kind and a hint.
//!
//! Usage: `codexmesh-leak-scan [--expect ORIGIN,...] [--tree DIR]... SCAN_DIR [ARTIFACT_DIR...]`
//! (`--tree` scans a kept test directory as the kit's hook would: logs, databases, configs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use codexmesh_test_kit::leaks;

fn main() -> ExitCode {
    let mut expect: Vec<String> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut trees: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--expect" {
            let Some(list) = args.next() else {
                eprintln!("leak scan: --expect needs a comma-separated list of origins");
                return ExitCode::from(2);
            };
            expect.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        } else if arg == "--tree" {
            match args.next() {
                Some(dir) => trees.push(PathBuf::from(dir)),
                None => {
                    eprintln!("leak scan: --tree needs a directory");
                    return ExitCode::from(2);
                }
            }
        } else {
            dirs.push(PathBuf::from(arg));
        }
    }
    let Some(scan_dir) = dirs.first().cloned() else {
        eprintln!("usage: codexmesh-leak-scan [--expect ORIGIN,...] SCAN_DIR [ARTIFACT_DIR...]");
        return ExitCode::from(2);
    };
    // The artifacts are scanned here, recording into the same files as the hooks did.
    std::env::set_var("CODEXMESH_LEAK_SCAN_DIR", &scan_dir);
    for tree in &trees {
        leaks::scan_tree("test dir", tree, &leaks::is_scanned_file);
    }
    for artifacts in &dirs[1..] {
        if artifacts.is_dir() {
            leaks::scan_tree("test artifacts", artifacts, &|_| true);
        }
    }

    let read = |name: &str| std::fs::read_to_string(scan_dir.join(name)).unwrap_or_default();
    let mut per_origin: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in read("scanned.tsv").lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let bytes = cols.get(3).and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
        let entry = per_origin.entry(cols[0].to_string()).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }
    println!("leak scan: what was read");
    for (origin, (files, bytes)) in &per_origin {
        println!(
            "  {origin:<26} {files:>7} items {:>10.1} MB",
            *bytes as f64 / 1e6
        );
    }
    let errors = read("errors.tsv");
    if !errors.is_empty() {
        println!(
            "leak scan: {} place(s) could not be read (e.g. an Envoy a test had already stopped):",
            errors.lines().count()
        );
        for line in errors.lines().take(10) {
            println!("  {line}");
        }
    }
    let mut failed = false;
    for origin in &expect {
        if !per_origin.contains_key(origin) {
            println!(
                "leak scan: FAILED: nothing of kind `{origin}` was scanned (a hook is broken)"
            );
            failed = true;
        }
    }
    let findings = read("findings.tsv");
    if findings.is_empty() {
        println!("leak scan: no access token, refresh token, pool key, API token, password, TOTP secret or prompt text found");
    } else {
        println!(
            "leak scan: FAILED: {} finding(s):",
            findings.lines().count()
        );
        for line in findings.lines() {
            println!("  {line}");
        }
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
