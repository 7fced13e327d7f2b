//! Credential files (Codex auth.json, Claude Code's and Gemini CLI's files): each parses or is
//! refused with a typed error; what parses is the provider its content names.
#![no_main]

use codexmesh_model::{
    claude_credentials, credential_files, credentials, gemini_credentials, Provider,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
