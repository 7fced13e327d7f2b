//! The checks of the model's parsers, one per fuzz target: `fuzz/fuzz_targets/<target>.rs`
//! runs it under libFuzzer, and the model's test suite (`tests/parser_props.rs`) runs it on
//! seeded inputs and on every input kept in `fuzz/regressions/<target>/`.
//!
//! Rule kept here: a check panics only when the code under test breaks a rule.
#![allow(dead_code)]

use codexmesh_model::{
    claude_credentials, credential_files, credentials, declarative, gemini_credentials, Provider,
};

/// Credential files (Codex auth.json, Claude Code's and Gemini CLI's files): each parses or is
/// refused with a typed error; what parses is the provider its content names.
pub fn credential_file(data: &[u8]) {
    let detected = credential_files::detect(data);
    if let Ok(c) = credential_files::parse_file(data, None) {
        assert_eq!(Some(c.provider), detected);
    }
    for provider in [Provider::Codex, Provider::Claude, Provider::Gemini] {
        if let Ok(c) = credential_files::parse_file(data, Some(provider)) {
            assert_eq!(c.provider, provider);
        }
    }
    let _ = credentials::parse(data);
    let _ = claude_credentials::parse(data);
    let _ = gemini_credentials::parse(data);
    let text = String::from_utf8_lossy(data);
    let _ = credentials::jwt_expiry_ms(&text);
    let _ = credentials::id_claims(&text);
}

/// `codexmesh apply` YAML: any text reads or is refused at a position in the file; documents
/// that read write back (`to_yaml`) to documents equal to them.
pub fn declarative_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match declarative::read_all([("f.yaml", text)]) {
        Ok(docs) => {
            let written = declarative::to_yaml(&docs);
            let again = declarative::read_all([("f.yaml", written.as_str())]);
            assert!(
                again.is_ok(),
                "wrote back\n{written}\nwhich reads as {again:?}"
            );
            let Ok(again) = again else {
                return;
            };
            let bodies = |d: &[declarative::Document]| {
                d.iter()
                    .map(|d| (d.name.clone(), d.body.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bodies(&docs), bodies(&again), "{written}");
        }
        Err(e) => assert!(e.to_string().starts_with("f.yaml")),
    }
}
