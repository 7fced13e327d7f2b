//! The control plane's shape, checked: crates depend in one direction
//! (`proto ← model ← store ← engine ← codexmesh`, and `filter/core` only on `proto`), and no
//! crate has a cycle between its top-level modules.
//!
//! Module edges are read from the source: a file `src/a.rs` (or `src/a/**`) that names
//! `crate::b` depends on `b`. Test modules (`*_tests.rs`, `tests.rs`, and everything after a
//! `#[cfg(test)]` line) are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Workspace crates a manifest depends on (normal dependencies only).
fn workspace_deps(manifest: &Path) -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
    Ok(all_deps(manifest)?
        .into_iter()
        .filter(|d| d.starts_with("codexmesh"))
        .collect())
}

/// Every crate a manifest depends on (normal dependencies only).
fn all_deps(manifest: &Path) -> Result<BTreeSet<String>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(manifest)?;
    let mut deps = BTreeSet::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim();
                if !name.starts_with('#') {
                    deps.insert(name.to_owned());
                }
            }
        }
    }
    Ok(deps)
}

/// The domain crate does no I/O: none of the crates that do (database, network, runtime, files
/// beyond std) may appear among its dependencies.
#[test]
fn the_model_depends_on_nothing_that_does_io() -> TestResult {
    let deps = all_deps(&workspace().join("control-plane/model/Cargo.toml"))?;
    for io in [
        "sqlx", "tokio", "reqwest", "axum", "tonic", "hyper", "tempfile", "libc",
    ] {
        assert!(!deps.contains(io), "codexmesh-model depends on {io}");
    }
    assert!(
        deps.contains("serde"),
        "the manifest was not read: {deps:?}"
    );
    Ok(())
}

#[test]
fn crates_depend_in_one_direction() -> TestResult {
    let root = workspace();
    let expect: [(&str, &[&str]); 6] = [
        ("proto/Cargo.toml", &[]),
        ("filter/core/Cargo.toml", &["codexmesh-proto"]),
        ("control-plane/model/Cargo.toml", &["codexmesh-proto"]),
        (
            "control-plane/store/Cargo.toml",
            &["codexmesh-model", "codexmesh-proto"],
        ),
        (
            "control-plane/engine/Cargo.toml",
            &["codexmesh-model", "codexmesh-proto", "codexmesh-store"],
        ),
        (
            "control-plane/codexmesh/Cargo.toml",
            &[
                "codexmesh-engine",
                "codexmesh-model",
                "codexmesh-proto",
                "codexmesh-store",
            ],
        ),
    ];
    for (manifest, allowed) in expect {
        let deps = workspace_deps(&root.join(manifest))?;
        let allowed: BTreeSet<String> = allowed.iter().map(|s| (*s).to_owned()).collect();
        let extra: Vec<_> = deps.difference(&allowed).collect();
        assert!(
            extra.is_empty(),
            "{manifest} depends on {extra:?}, against the layering"
        );
    }
    Ok(())
}

/// The top-level module a file belongs to (`src/a.rs`, `src/a/mod.rs`, `src/a/b.rs` → `a`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn is_test_file(file: &Path) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// `crate::x` names in the code (not comments) of the non-test part of a file; in a top-level
/// module's own file, `super::x` too (its parent is the crate root).
fn crate_refs(text: &str, top_level: bool) -> BTreeSet<String> {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| {
            let l = if top_level {
                l.replace("super::", "crate::")
            } else {
                l.to_owned()
            };
            l + "\n"
        })
        .collect();
    let code = code.as_str();
    let mut refs = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        // Not `codexmesh_crate::` or a doc link's `super::crate`.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = code[i + 7..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            refs.insert(name);
        }
    }
    // `use crate::{a, b::c}`
    for (i, _) in code.match_indices("crate::{") {
        let inner: String = code[i + 8..].chars().take_while(|c| *c != '}').collect();
        for part in inner.split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_cycles_inside_a_crate() -> TestResult {
    let root = workspace();
    for krate in [
        "control-plane/model",
        "control-plane/store",
        "control-plane/engine",
        "control-plane/codexmesh",
        "filter/core",
    ] {
        let src = root.join(krate).join("src");
        let files = codexmesh_test_kit::source::rust_files(&src)?;
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in files.iter().filter(|f| !is_test_file(f)) {
            let Some(module) = top_module(&src, file) else {
                continue;
            };
            let top_level = file.parent() == Some(src.as_path());
            let refs = crate_refs(&std::fs::read_to_string(file)?, top_level);
            let entry = graph.entry(module.clone()).or_default();
            entry.extend(refs.into_iter().filter(|r| *r != module));
        }
        // Only edges between the crate's own top-level modules count.
        let modules: BTreeSet<String> = graph.keys().cloned().collect();
        for deps in graph.values_mut() {
            deps.retain(|d| modules.contains(d));
        }
        if let Some(cycle) = find_cycle(&graph) {
            return Err(format!("{krate}: module cycle {}", cycle.join(" → ")).into());
        }
    }
    Ok(())
}

#[test]
fn cycles_are_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        crate_refs(
            "use crate::{a, b::c};\nuse crate::d::e;\nmy_crate::x;\n// crate::y\nsuper::f();\n#[cfg(test)]\nuse crate::z;",
            true
        ),
        ["a", "b", "d", "f"].into_iter().map(str::to_owned).collect()
    );
}
