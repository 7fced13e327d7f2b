//! Reading the repository's own files, for tests that check the code itself (layering, settings
//! declared once) and for golden files (stable ids).
//!
//! Rules: paths are relative to the repository root ([`crate::repo_root`]); nothing here writes.

use std::io;
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir` (recursively, in no particular order).
pub fn rust_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    Ok(out)
}

/// The control plane's random ids (`acc_`, `pool_`, `key_` and 16 alphanumerics), replaced by
/// their order of first appearance per kind (`<acc#1>`, `<pool#2>`), so a golden file built from
/// a fresh store is the same from run to run.
#[derive(Debug, Default)]
pub struct StableIds {
    seen: Vec<String>,
}

const ID_PREFIXES: [&str; 3] = ["acc_", "pool_", "key_"];
const ID_RANDOM_LEN: usize = 16;

impl StableIds {
    /// The placeholder for `s` when the whole of `s` is an id, else None.
    pub fn id(&mut self, s: &str) -> Option<String> {
        let prefix = ID_PREFIXES.into_iter().find(|p| {
            s.strip_prefix(p).is_some_and(|tail| {
                tail.len() == ID_RANDOM_LEN && tail.bytes().all(|b| b.is_ascii_alphanumeric())
            })
        })?;
        if !self.seen.iter().any(|x| x == s) {
            self.seen.push(s.to_owned());
        }
        let n = self
            .seen
            .iter()
            .filter(|x| x.starts_with(prefix))
            .position(|x| x == s)
            .unwrap_or(0)
            + 1;
        Some(format!("<{}#{n}>", prefix.trim_end_matches('_')))
    }

    /// `text` with every id in it replaced (an id is a prefix followed by exactly 16
    /// alphanumerics).
    pub fn text(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while !rest.is_empty() {
            for prefix in ID_PREFIXES {
                if let Some(tail) = rest.strip_prefix(prefix) {
                    let len = tail.bytes().take_while(u8::is_ascii_alphanumeric).count();
                    if len == ID_RANDOM_LEN {
                        let end = prefix.len() + ID_RANDOM_LEN;
                        if let Some(placeholder) = self.id(&rest[..end]) {
                            out.push_str(&placeholder);
                            rest = &rest[end..];
                            continue 'scan;
                        }
                    }
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::StableIds;

    #[test]
    fn ids_are_numbered_by_first_appearance_per_kind() {
        let mut ids = StableIds::default();
        assert_eq!(
            ids.text(
                "acc_AAAAAAAAAAAAAAAA pool_BBBBBBBBBBBBBBBB acc_CCCCCCCCCCCCCCCC \
                 acc_AAAAAAAAAAAAAAAA acc_short acc_DDDDDDDDDDDDDDDDX"
            ),
            "<acc#1> <pool#1> <acc#2> <acc#1> acc_short acc_DDDDDDDDDDDDDDDDX"
        );
        assert_eq!(ids.id("pool_BBBBBBBBBBBBBBBB").as_deref(), Some("<pool#1>"));
        assert_eq!(ids.id("key_EEEEEEEEEEEEEEEE").as_deref(), Some("<key#1>"));
        assert_eq!(ids.id("acc_short"), None);
    }

    #[test]
    fn rust_files_are_found_recursively() -> std::io::Result<()> {
        let files = super::rust_files(&crate::repo_root().join("tests/kit/src"))?;
        assert!(files.iter().any(|f| f.ends_with("source.rs")), "{files:?}");
        assert!(files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "rs")));
        Ok(())
    }
}
