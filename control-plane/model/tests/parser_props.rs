//! Property tests of the model's parsers of outside input (issue 16: fuzzing in the suite): the
//! Codex `auth.json`, Claude Code's and Gemini CLI's credential files (and the content sniffing
//! that tells them apart), JWT payloads, and the YAML documents of `codexmesh apply`.
//!
//! Rules kept here:
//! - Seeded cases (`tests/seeded`): arbitrary bytes and mutations (byte-level and JSON-aware) of
//!   valid files; a few thousand per parser, well under a couple of seconds in a debug build.
//! - Beyond "no panic": a file that parses renders back (as the CLI writes it) to the same
//!   tokens; a file's provider is the one its content names; a YAML file that reads writes back
//!   (`to_yaml`) to documents equal to it; every refusal is a typed error with a message and, for
//!   YAML, a position inside the text.
//! - Inputs the coverage-guided runs (`fuzz/`) found are kept as regression cases
//!   (`fuzz/regressions/<target>/`), replayed here, and the fuzz targets' own checks
//!   (`fuzz/checks/model.rs`) run on every case.

use codexmesh_model::credentials::{self, unsigned_jwt};
use codexmesh_model::{
    claude_credentials, credential_files, declarative, gemini_credentials, CredentialKind, Provider,
};
use serde_json::json;

#[path = "../../../fuzz/checks/model.rs"]
mod checks;
#[path = "../../../tests/seeded/mod.rs"]
mod seeded;
use seeded::{input, Rng};

fn codex_file() -> String {
    let ns = "https://api.openai.com/auth";
    json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": unsigned_jwt(&json!({
                "email": "a@example.com",
                ns: {"chatgpt_account_id": "acct-1", "chatgpt_user_id": "u-1", "chatgpt_plan_type": "pro"}
            })),
            "access_token": unsigned_jwt(&json!({"exp": 1_900_000_000})),
            "refresh_token": "rt-1",
            "account_id": "acct-1"
        },
        "last_refresh": "2026-01-01T00:00:00Z"
    })
    .to_string()
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        codex_file().into_bytes(),
        claude_credentials::render(
            "sk-ant-oat01-a",
            "sk-ant-ort01-r",
            Some(1_900_000_000_000),
            Some("max"),
        )
        .into_bytes(),
        br#"{"api_key":"sk-ant-api03-xyz"}"#.to_vec(),
        b"sk-ant-api03-bare\n".to_vec(),
        gemini_credentials::render(
            "ya29.a",
            "1//r",
            &unsigned_jwt(&json!({"sub": "42", "email": "g@example.com"})),
            Some(1_900_000_000_000),
            Some("proj-1"),
        )
        .into_bytes(),
    ]
}

/// Replays the inputs the coverage-guided runs kept for `target` (none yet is fine).
fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn check_credential_file(bytes: &[u8], ctx: &dyn Fn() -> String) {
    let detected = credential_files::detect(bytes);
    match credential_files::parse_file(bytes, None) {
        Ok(c) => {
            assert_eq!(Some(c.provider), detected, "{}", ctx());
            assert!(!c.access_token.is_empty(), "{}", ctx());
            check_renders_back(&c, ctx);
        }
        Err(e) => assert!(!e.to_string().is_empty(), "{}", ctx()),
    }
    for provider in [Provider::Codex, Provider::Claude, Provider::Gemini] {
        if let Ok(c) = credential_files::parse_file(bytes, Some(provider)) {
            assert_eq!(c.provider, provider, "{}", ctx());
        }
    }
    // The provider-specific parsers on their own.
    if let Ok(c) = credentials::parse(bytes) {
        assert!(
            !c.refresh_token.is_empty() || !c.access_token.is_empty(),
            "{}",
            ctx()
        );
    }
    let _ = claude_credentials::parse(bytes).map_err(|e| e.to_string());
    let _ = gemini_credentials::parse(bytes).map_err(|e| e.to_string());
    let text = String::from_utf8_lossy(bytes);
    let _ = credentials::jwt_expiry_ms(&text);
    let _ = credentials::id_claims(&text);
    let _ = credentials::decode_jwt_payload(&text);
}

/// A parsed file, written back the way its CLI writes it, parses to the same tokens.
fn check_renders_back(c: &credentials::LoginCredentials, ctx: &dyn Fn() -> String) {
    let rendered = match (c.provider, c.credential_kind) {
        (Provider::Codex, _) => credentials::render(
            &c.id_token,
            &c.access_token,
            &c.refresh_token,
            &c.chatgpt_account_id,
            "2026-01-01T00:00:00Z",
        ),
        (Provider::Claude, CredentialKind::Oauth) => claude_credentials::render(
            &c.access_token,
            &c.refresh_token,
            c.access_token_expires_at_ms,
            c.plan.as_deref(),
        ),
        (Provider::Gemini, _) => gemini_credentials::render(
            &c.access_token,
            &c.refresh_token,
            &c.id_token,
            c.access_token_expires_at_ms,
            c.project_id.as_deref(),
        ),
        _ => return,
    };
    let again = credential_files::parse_file(rendered.as_bytes(), Some(c.provider));
    assert!(
        again.is_ok(),
        "{}: rendered back, refused: {again:?}\n{rendered}",
        ctx()
    );
    let Ok(again) = again else {
        return;
    };
    assert_eq!(
        (&again.access_token, &again.refresh_token, &again.id_token),
        (&c.access_token, &c.refresh_token, &c.id_token),
        "{}",
        ctx()
    );
    assert_eq!(
        (&again.chatgpt_account_id, &again.project_id),
        (&c.chatgpt_account_id, &c.project_id),
        "{}",
        ctx()
    );
}

#[test]
fn credential_files_parse_or_refuse_and_render_back() {
    let owned = seeds();
    let seeds: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
    for (i, seed) in seeds.iter().enumerate() {
        check_credential_file(seed, &|| format!("seed {i}"));
        assert!(
            credential_files::parse_file(seed, None).is_ok(),
            "seed {i} must parse"
        );
    }
    for (i, bytes) in regressions("credential_file").iter().enumerate() {
        checks::credential_file(bytes);
        check_credential_file(bytes, &|| format!("regression {i}: {bytes:?}"));
    }
    let mut rng = Rng::new(11);
    for case in 0..seeded::cases(4000) {
        let bytes = input(&mut rng, &seeds, 2048);
        checks::credential_file(&bytes);
        check_credential_file(&bytes, &|| {
            format!("case {case}: {:?}", String::from_utf8_lossy(&bytes))
        });
    }
}

const YAML_SEEDS: &[&str] = &[
    include_str!("../../../examples/pools.yaml"),
    "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec:\n  routing: {strategy: priority_order, max_attempts: 2, primary_threshold_percent: 90}\n  accounts:\n    - {account: alice@example.com, priority: 1}\n    - account: bob\n      weight: 5\n  keys:\n    - label: ci\n    - {label: ops, operator: true, routing: {strategy: round_robin}}\n    - {label: x, routing: inherit}\n",
    "- api_version: codexmesh.dev/v1\n  kind: Pool\n  metadata: {name: a}\n- api_version: codexmesh.dev/v1\n  kind: Operator\n  metadata: {name: bob}\n  spec: {role: admin, pools: [a]}\n",
    "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: a}\nspec: {network: {allowed_cidrs: [10.0.0.0/8, '::1/128']}}\n",
];

fn check_yaml(text: &str, ctx: &dyn Fn() -> String) {
    match declarative::read_all([("f.yaml", text)]) {
        Ok(docs) => {
            let written = declarative::to_yaml(&docs);
            let again = declarative::read_all([("f.yaml", written.as_str())]);
            assert!(
                again.is_ok(),
                "{}: wrote back\n{written}\nwhich reads as {again:?}",
                ctx()
            );
            let Ok(again) = again else {
                return;
            };
            let bodies = |d: &[declarative::Document]| {
                d.iter()
                    .map(|d| (d.name.clone(), d.body.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bodies(&docs), bodies(&again), "{}\n{written}", ctx());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty(), "{}", ctx());
            assert!(message.starts_with("f.yaml"), "{}: {message}", ctx());
        }
    }
}

#[test]
fn apply_yaml_reads_or_refuses_and_writes_back() {
    for (i, text) in YAML_SEEDS.iter().enumerate() {
        let read = declarative::read_all([("f.yaml", *text)]);
        assert!(read.is_ok(), "seed {i} must read: {read:?}");
        check_yaml(text, &|| format!("seed {i}"));
    }
    for (i, bytes) in regressions("declarative_yaml").iter().enumerate() {
        checks::declarative_yaml(bytes);
        let text = String::from_utf8_lossy(bytes);
        check_yaml(&text, &|| format!("regression {i}: {text:?}"));
    }
    let seeds: Vec<&[u8]> = YAML_SEEDS.iter().map(|s| s.as_bytes()).collect();
    let mut rng = Rng::new(12);
    for case in 0..seeded::cases(3000) {
        let bytes = input(&mut rng, &seeds, 2048);
        checks::declarative_yaml(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        check_yaml(&text, &|| format!("case {case}: {text:?}"));
    }
}
