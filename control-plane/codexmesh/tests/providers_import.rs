//! Claude and Gemini accounts through the real binary: `account import` of each kind of file
//! (Claude Code subscription login, API key, Gemini CLI login with the project given, in the
//! file, or discovered with loadCodeAssist), a contradicting `--provider`, field-path errors,
//! list/status showing provider and the provider's quota windows, export in the provider's own
//! format; and with `serve`: the API upload, the watched folder picking files by name, and the
//! snapshot a gRPC subscriber gets carrying provider, credential kind, project and the opened
//! token.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use codexmesh_model::credentials::unsigned_jwt;
use codexmesh_proto::v1 as pb;
use codexmesh_proto::v1::mesh_client::MeshClient;
use codexmesh_test_kit::{AnyError, Cli, Served, TestResult, Workspace};
use serde_json::{json, Value};

fn claude_file(refresh: &str) -> String {
    json!({"claudeAiOauth": {
        "accessToken": format!("sk-ant-oat01-{refresh}"),
        "refreshToken": format!("sk-ant-ort01-{refresh}"),
        "expiresAt": 1_950_000_000_000_i64,
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_20x"
    }})
    .to_string()
}

fn gemini_file(sub: &str, project: Option<&str>) -> String {
    let mut v = json!({
        "access_token": format!("ya29.{sub}"),
        "refresh_token": format!("1//{sub}"),
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "token_type": "Bearer",
        "id_token": unsigned_jwt(&json!({"sub": sub, "email": format!("{sub}@gmail.test")})),
        "expiry_date": 1_950_000_000_000_i64
    });
    if let Some(p) = project {
        v["project_id"] = json!(p);
    }
    v.to_string()
}

/// A one-shot Code Assist stand-in: answers one `loadCodeAssist` with `project`, and hands
/// back the request it saw.
fn load_code_assist_stub(
    project: &str,
) -> Result<(String, std::thread::JoinHandle<String>), AnyError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let body = json!({"currentTier": {"id": "standard-tier"}, "cloudaicompanionProject": project})
        .to_string();
    let handle = std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return String::new();
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then the (small) JSON body.
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if seen.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        String::from_utf8_lossy(&seen).into_owned()
    });
    Ok((url, handle))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn cli_imports_each_kind_and_shows_providers() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let dir = ws.path();

    // Claude Code subscription login.
    let claude = dir.join("claude.json");
    std::fs::write(&claude, claude_file("one"))?;
    let claude_path = claude.to_str().ok_or("path")?;
    let r = ws.ok(&["account", "import", claude_path, "--pool", "main", "--json"])?;
    assert!(!r.stdout.contains("sk-ant-oat01-one") && !r.stderr.contains("sk-ant-ort01-one"));
    let first: Value = serde_json::from_str(r.stdout.trim())?;
    let acc = &first["account"];
    assert_eq!(
        (
            s(&acc["provider"]),
            s(&acc["credential_kind"]),
            s(&acc["plan"])
        ),
        ("claude", "oauth", "max"),
        "{first}"
    );
    assert!(s(&acc["chatgpt_account_id"]).starts_with("claude:"));
    assert_eq!(acc["project_id"], Value::Null);
    // One login, one account: the same file again updates it.
    let again = ws.ok_json(&["account", "import", claude_path, "--pool", "main"])?;
    assert_eq!(
        (s(&again["action"]), s(&again["account"]["id"])),
        ("updated", s(&acc["id"]))
    );

    // A Claude API key, as a bare key file.
    let key = dir.join("key.txt");
    std::fs::write(&key, "sk-ant-api03-secretkey\n")?;
    let keyed = ws.ok_json(&[
        "account",
        "import",
        key.to_str().ok_or("path")?,
        "--pool",
        "main",
        "--name",
        "console",
    ])?;
    assert_eq!(
        (
            s(&keyed["account"]["provider"]),
            s(&keyed["account"]["credential_kind"])
        ),
        ("claude", "api_key")
    );

    // --provider contradicting the content: a usage error naming both, nothing written.
    let r = ws.run(&[
        "account",
        "import",
        claude_path,
        "--pool",
        "main",
        "--provider",
        "gemini",
    ])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("this is a claude credential file, not a gemini one"),
        "{}",
        r.stderr
    );
    let r = ws.run(&[
        "account",
        "import",
        claude_path,
        "--pool",
        "main",
        "--provider",
        "mistral",
    ])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    // A field missing: its path in the file.
    let broken = dir.join("broken.json");
    std::fs::write(
        &broken,
        json!({"claudeAiOauth": {"refreshToken": "r"}}).to_string(),
    )?;
    let r = ws.run(&[
        "account",
        "import",
        broken.to_str().ok_or("path")?,
        "--pool",
        "main",
    ])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("claudeAiOauth.accessToken is missing"),
        "{}",
        r.stderr
    );

    // Gemini: the project from --project; --project on a Claude file is refused.
    let g1 = dir.join("g1.json");
    std::fs::write(&g1, gemini_file("111", None))?;
    let g1_path = g1.to_str().ok_or("path")?;
    let gem = ws.ok_json(&[
        "account",
        "import",
        g1_path,
        "--pool",
        "main",
        "--project",
        "proj-cli",
    ])?;
    assert_eq!(
        (
            s(&gem["account"]["provider"]),
            s(&gem["account"]["project_id"]),
            s(&gem["account"]["chatgpt_account_id"]),
            s(&gem["account"]["email"])
        ),
        ("gemini", "proj-cli", "111", "111@gmail.test")
    );
    let r = ws.run(&[
        "account",
        "import",
        claude_path,
        "--pool",
        "main",
        "--project",
        "p",
    ])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("Gemini accounts only"), "{}", r.stderr);

    // Gemini without a project: discovered from loadCodeAssist with the account's token.
    let g2 = dir.join("g2.json");
    std::fs::write(&g2, gemini_file("222", None))?;
    let g2_path = g2.to_str().ok_or("path")?;
    let (url, stub) = load_code_assist_stub("proj-found")?;
    let found = ws.ok_json(&[
        "--gemini-base-url",
        &url,
        "account",
        "import",
        g2_path,
        "--pool",
        "main",
    ])?;
    let seen = stub.join().map_err(|_| "stub panicked")?;
    assert!(
        seen.starts_with("POST /v1internal:loadCodeAssist "),
        "{seen}"
    );
    assert!(seen.contains("ya29.222"), "the account's own token: {seen}");
    assert!(seen.contains("\"pluginType\":\"GEMINI\""), "{seen}");
    assert_eq!(s(&found["account"]["project_id"]), "proj-found");
    // ... and nowhere to ask: a clear error, no account.
    let g3 = dir.join("g3.json");
    std::fs::write(&g3, gemini_file("333", None))?;
    let r = ws.run(&[
        "--gemini-base-url",
        "http://127.0.0.1:9",
        "account",
        "import",
        g3.to_str().ok_or("path")?,
        "--pool",
        "main",
    ])?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no Code Assist project"), "{}", r.stderr);
    assert!(r.stderr.contains("--project"), "{}", r.stderr);

    // list and status show the provider and its windows.
    let list = ws.ok(&["account", "list"])?.stdout;
    assert!(
        list.starts_with("POOL") && list.contains("PROVIDER"),
        "{list}"
    );
    assert!(list.contains("claude (api key)"), "{list}");
    assert!(list.contains("gemini (proj-cli)"), "{list}");
    let listed = ws.ok_json(&["account", "list"])?;
    let providers: Vec<&str> = listed
        .as_array()
        .ok_or("list --json is not an array")?
        .iter()
        .map(|a| s(&a["provider"]))
        .collect();
    assert_eq!(providers.len(), 4, "{listed}");
    assert!(!listed.to_string().contains("proj-found") || providers.contains(&"gemini"));
    let status = ws.ok(&["status"])?.stdout;
    assert!(status.contains("no subscription windows"), "{status}");
    assert!(status.contains("daily -"), "{status}");
    assert!(status.contains("5-hour - 7-day -"), "{status}");
    let status = ws.ok_json(&["status"])?;
    let accounts = status["pools"][0]["accounts"]
        .as_array()
        .ok_or("no accounts in status")?;
    let key_row = accounts
        .iter()
        .find(|a| a["credential_kind"] == "api_key")
        .ok_or("no api-key account in status")?;
    assert_eq!(key_row["windows"], json!([]));
    let gemini_row = accounts
        .iter()
        .find(|a| a["provider"] == "gemini")
        .ok_or("no gemini account in status")?;
    assert_eq!(
        gemini_row["windows"],
        json!([{"window": "primary", "label": "daily", "minutes": 1440}])
    );

    // export writes each provider's own file.
    let out = dir.join("exported-claude.json");
    ws.ok(&[
        "account",
        "export",
        s(&acc["id"]),
        "--out",
        out.to_str().ok_or("path")?,
        "--keep",
    ])?;
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(written["claudeAiOauth"]["refreshToken"], "sk-ant-ort01-one");
    assert_eq!(written["claudeAiOauth"]["subscriptionType"], "max");
    let out = dir.join("exported-gemini.json");
    ws.ok(&[
        "account",
        "export",
        s(&gem["account"]["id"]),
        "--out",
        out.to_str().ok_or("path")?,
    ])?;
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(
        (s(&written["refresh_token"]), s(&written["project_id"])),
        ("1//111", "proj-cli")
    );
    Ok(())
}

async fn wait_accounts(
    ws: &Workspace,
    pool: &str,
    n: usize,
    within: Duration,
) -> Result<Value, AnyError> {
    let deadline = Instant::now() + within;
    loop {
        let list = ws.ok_json(&["account", "list", "--pool", pool]);
        if let Ok(v) = &list {
            if v.as_array().map(Vec::len) == Some(n) {
                return Ok(v.clone());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{pool} never had {n} accounts: {list:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_api_watched_folder_and_snapshot() -> TestResult {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let drop = ws.path().join("drop");
    std::fs::create_dir(&drop)?;
    let watch = format!("{}=watched", drop.display());
    let served = Served::start(
        &ws,
        &[
            "--watch",
            &watch,
            "--watch-interval-ms",
            "100",
            "--quota-poll-interval-secs",
            "0",
        ],
    )?;
    let owner = ws.ok_json(&[
        "operator", "token", "create", "--label", "t", "--role", "owner",
    ])?["secret"]
        .as_str()
        .ok_or("no secret")?
        .to_owned();
    let base = format!("http://{}", served.admin_addr()?);
    let http = reqwest::Client::new();
    let upload = |query: &str, body: String| {
        http.post(format!("{base}/api/v1/pools/main/accounts{query}"))
            .bearer_auth(&owner)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // API: a Claude upload; a contradicting provider and a missing field name their field.
    let resp = upload("?label=api-claude", claude_file("api")).await?;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await?;
    assert_eq!(
        (s(&v["account"]["provider"]), s(&v["account"]["label"])),
        ("claude", "api-claude"),
        "{v}"
    );
    assert!(!v.to_string().contains("sk-ant-oat01-api"));
    let resp = upload("?provider=gemini", claude_file("x")).await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["field"], "provider", "{v}");
    let resp = upload("", json!({"access_token": "ya29.x"}).to_string()).await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["field"], "refresh_token", "{v}");
    let resp = upload("?project=proj-api", gemini_file("444", None)).await?;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await?;
    assert_eq!(s(&v["account"]["project_id"]), "proj-api", "{v}");
    let api = http
        .get(format!("{base}/api/v1/accounts"))
        .bearer_auth(&owner)
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert!(
        api.to_string().contains("\"credential_kind\":\"oauth\""),
        "{api}"
    );
    // The overview splits the mixed pool by provider, each with its own windows.
    let overview = http
        .get(format!("{base}/api/v1/overview"))
        .bearer_auth(&owner)
        .send()
        .await?
        .json::<Value>()
        .await?;
    let main = overview["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pool"] == "main"))
        .ok_or("no main in the overview")?;
    let split: Vec<(String, Vec<String>)> = main["providers"]
        .as_array()
        .ok_or("no providers in the overview")?
        .iter()
        .map(|p| {
            let labels = p["windows"]
                .as_array()
                .map(|ws| ws.iter().map(|w| s(&w["label"]).to_owned()).collect())
                .unwrap_or_default();
            (s(&p["provider"]).to_owned(), labels)
        })
        .collect();
    assert_eq!(
        split,
        [
            (
                "claude".to_owned(),
                vec!["5-hour".to_owned(), "7-day".to_owned()]
            ),
            ("gemini".to_owned(), vec!["daily".to_owned()])
        ],
        "{main}"
    );

    // Watched folder: by file name; content that disagrees is logged and skipped.
    std::fs::write(drop.join("claude_x.json"), claude_file("watched"))?;
    std::fs::write(
        drop.join("gemini_y.json"),
        gemini_file("555", Some("proj-w")),
    )?;
    std::fs::write(
        drop.join("claude_wrong.json"),
        gemini_file("666", Some("p")),
    )?;
    let listed = wait_accounts(&ws, "watched", 2, Duration::from_secs(15)).await?;
    let mut kinds: Vec<(String, String)> = listed
        .as_array()
        .ok_or("not an array")?
        .iter()
        .map(|a| (s(&a["provider"]).to_owned(), s(&a["project_id"]).to_owned()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("claude".to_owned(), String::new()),
            ("gemini".to_owned(), "proj-w".to_owned())
        ]
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while served.log_lines("claude_wrong.json").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wrong = served.log_lines("claude_wrong.json");
    assert!(
        wrong
            .iter()
            .any(|l| l.contains("this is a gemini credential file, not a claude one")),
        "{wrong:?}"
    );

    // The snapshot: provider, credential kind, project and the opened token.
    let token = std::fs::read_to_string(ws.data_dir().join("push.token"))?
        .trim()
        .to_owned();
    let mut c = MeshClient::connect(format!("http://{}", served.grpc)).await?;
    let mut req = tonic::Request::new(pb::SubscribeRequest {
        node_id: "providers-test".into(),
        known_version: 0,
        client_build: "providers-test".into(),
        egress_proxies: Vec::new(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = c.subscribe(req).await?.into_inner();
    // The first snapshot may predate the watched imports: take snapshots until one has them.
    let deadline = Instant::now() + Duration::from_secs(15);
    let snap = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .map_err(|_| "no snapshot with the watched Gemini account")??
            .ok_or("stream ended")?;
        if let Some(pb::subscribe_response::Kind::Snapshot(s)) = msg.kind {
            let has = |p: &str| {
                s.pools
                    .iter()
                    .flat_map(|x| &x.accounts)
                    .any(|a| a.project_id == p)
            };
            if has("proj-w") && has("proj-api") {
                break s;
            }
        }
    };
    let accounts: Vec<&pb::Account> = snap.pools.iter().flat_map(|p| &p.accounts).collect();
    let gem = accounts
        .iter()
        .find(|a| a.project_id == "proj-w")
        .ok_or("the watched Gemini account is not in the snapshot")?;
    assert_eq!(gem.provider, pb::Provider::Gemini as i32);
    assert_eq!(gem.credential_kind, pb::CredentialKind::Oauth as i32);
    assert_eq!(gem.access_token, "ya29.555");
    let cl = accounts
        .iter()
        .find(|a| a.access_token == "sk-ant-oat01-api")
        .ok_or("the uploaded Claude account is not in the snapshot")?;
    assert_eq!(cl.provider, pb::Provider::Claude as i32);
    assert!(cl.project_id.is_empty());
    Ok(())
}

/// The files the simulator says each CLI would hold import as their provider; a Gemini file
/// without a project gets the one the simulator's loadCodeAssist names for that account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_credential_files_import_as_their_providers() -> TestResult {
    let sim = codexmesh_test_kit::Sim::start()?;
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    let claude = sim.create_claude_account(json!({})).await?;
    let key = sim.create_claude_api_key_account(json!({})).await?;
    let gemini = sim
        .create_gemini_account(json!({"project_id": "proj-sim"}))
        .await?;
    let root = sim.root_url();
    let mut imported = Vec::new();
    for (name, account) in [("claude", &claude), ("key", &key), ("gemini", &gemini)] {
        let path = ws.path().join(format!("{name}.json"));
        let id = s(&account["account_id"]).to_owned();
        let file = sim.write_credentials_file(&id, &path).await?;
        let r = ws.ok(&[
            "--gemini-base-url",
            &root,
            "account",
            "import",
            path.to_str().ok_or("path")?,
            "--pool",
            "main",
            "--json",
        ])?;
        for secret in [
            "accessToken",
            "refreshToken",
            "api_key",
            "access_token",
            "refresh_token",
        ]
        .iter()
        .filter_map(|k| file.get("claudeAiOauth").unwrap_or(&file).get(*k))
        .filter_map(Value::as_str)
        {
            assert!(!r.stdout.contains(secret) && !r.stderr.contains(secret));
        }
        let v: Value = serde_json::from_str(r.stdout.trim())?;
        imported.push((
            s(&v["account"]["provider"]).to_owned(),
            s(&v["account"]["credential_kind"]).to_owned(),
            s(&v["account"]["project_id"]).to_owned(),
        ));
    }
    assert_eq!(
        imported,
        [
            ("claude".into(), "oauth".into(), String::new()),
            ("claude".into(), "api_key".into(), String::new()),
            ("gemini".into(), "oauth".into(), "proj-sim".into()),
        ]
    );
    Ok(())
}
