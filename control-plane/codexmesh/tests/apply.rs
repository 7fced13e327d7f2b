//! `codexmesh apply` / `get` and `PUT` / `GET /api/v1/config`, driven as a user would: the real
//! binary on a real store, and `serve` for the API. Round trips (get → apply changes nothing;
//! apply → get states the file), dry run and prune, and a bad file's exit code and message
//! naming file, line and field path with nothing applied.

use std::path::PathBuf;

use codexmesh_model::declarative::{self as docs, Body, Document, KeyRoutingDoc, RoutingDoc};
use codexmesh_test_kit::serve::Served;
use codexmesh_test_kit::{logical_state, Cli, Login, TestResult, Workspace};
use serde_json::Value;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pools.yaml")
}

/// A store with the example's accounts (in a pool of their own) and its operator.
fn workspace() -> Result<Workspace, Box<dyn std::error::Error>> {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "seed"])?;
    for (id, email) in [
        ("acct-a", "alice@example.com"),
        ("acct-b", "bob@example.com"),
    ] {
        let login = Login::new(id, email, "plus", id);
        ws.import_auth(&format!("{id}.json"), &login.auth_json(), "seed", None)?;
    }
    ws.ok(&[
        "operator", "create", "--name", "dana", "--role", "viewer", "--pools", "seed",
    ])?;
    Ok(ws)
}

/// The documents with every routing setting spelled out (the example leaves defaults out;
/// `get` prints them), so the two compare field for field.
fn normalized(text: &str, file: &str) -> Result<Vec<Document>, Box<dyn std::error::Error>> {
    let full =
        |r: &RoutingDoc| RoutingDoc::from_routing(&r.to_routing(None), r.primary_account.clone());
    let mut found = docs::read_all([(file, text)])?;
    for d in &mut found {
        d.origin = docs::Origin::synthetic("-");
        if let Body::Pool(p) = &mut d.body {
            p.routing = full(&p.routing);
            for k in &mut p.keys {
                if let KeyRoutingDoc::Custom(r) = &k.routing {
                    k.routing = KeyRoutingDoc::Custom(full(r));
                }
            }
        }
    }
    Ok(found)
}

fn write(ws: &Workspace, name: &str, text: &str) -> Result<String, Box<dyn std::error::Error>> {
    let path = ws.path().join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_str().ok_or("path")?.to_owned())
}

#[test]
fn apply_dry_run_prune_and_get_round_trip() -> TestResult {
    let ws = workspace()?;
    let file = example();
    let file = file.to_str().ok_or("path")?;

    // A dry run prints the diff and writes nothing.
    // Compared logically (revision, pools, accounts, keys, operators): the raw file bytes move
    // when SQLite checkpoints its WAL on close, which is not a write.
    let stored = |ws: &Workspace| -> Result<_, Box<dyn std::error::Error>> {
        Ok((logical_state(ws)?, ws.ok(&["get", "operators"])?.stdout))
    };
    let before = stored(&ws)?;
    let dry = ws.ok(&["apply", "-f", file, "--dry-run"])?;
    assert!(
        dry.stdout.contains("+ pool team-a: created"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("    routing.strategy: quota_first → primary_first"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("~ operator dana: changed"),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("cmk_"), "a dry run shows no secret");
    assert!(stored(&ws)? == before, "a dry run wrote");

    // Applied: the new keys' secrets once, and they are the stored keys.
    let applied = ws.ok_json(&["apply", "-f", file])?;
    assert_eq!(applied["changed"], true, "{applied}");
    let new_keys = applied["new_keys"].as_array().ok_or("new_keys")?;
    assert_eq!(new_keys.len(), 3, "{applied}");
    assert!(new_keys
        .iter()
        .all(|k| k["secret"].as_str().is_some_and(|s| s.starts_with("cmk_"))));
    let keys = ws.ok_json(&["key", "list", "--pool", "team-a"])?;
    assert_eq!(keys.as_array().map(Vec::len), Some(2), "{keys}");
    let dana = ws.ok_json(&["operator", "list"])?;
    assert!(dana.to_string().contains("\"role\":\"admin\""), "{dana}");

    // Twice: no changes, nothing written.
    let revision = ws.ok_json(&["status"])?["revision"].clone();
    let again = ws.ok(&["apply", "-f", file])?;
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);
    assert!(
        again.stderr.contains("no changes: nothing was written"),
        "{}",
        again.stderr
    );
    assert_eq!(ws.ok_json(&["status"])?["revision"], revision);

    // apply → get states the file; get → apply (with prune) changes nothing.
    let got = ws.ok(&["get", "pools", "team-a", "-o", "yaml"])?.stdout;
    let got_b = ws.ok(&["get", "pools", "team-b"])?.stdout;
    let got_ops = ws.ok(&["get", "operators", "dana"])?.stdout;
    let text = std::fs::read_to_string(example())?;
    let want = normalized(&text, "example")?;
    let mut have = normalized(&got, "get")?;
    have.extend(normalized(&got_b, "get")?);
    assert_eq!(have, want[..2], "get:\n{got}{got_b}");
    // Without --prune an operator's pools only grow: dana keeps seed.
    assert!(
        got_ops.ends_with("  role: admin\n  pools:\n    - seed\n    - team-a\n"),
        "{got_ops}"
    );
    let everything = ws.ok(&["get", "pools"])?.stdout;
    let all = write(&ws, "all.yaml", &format!("{everything}\n{got_ops}"))?;
    let round = ws.ok_json(&["apply", "-f", &all, "--prune"])?;
    assert_eq!(round["changed"], false, "{round}");
    let json = ws.ok(&["get", "pools", "-o", "json"])?.stdout;
    let from_json = write(&ws, "all.json", &json)?;
    let round = ws.ok_json(&["apply", "-f", &from_json, "--dry-run"])?;
    assert!(
        round["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("no changes")),
        "{round}"
    );

    // A bad file: exit 2, file:line:column and the field path, nothing applied (the refusal
    // is audited: the state is compared, not the file).
    let before = (logical_state(&ws)?, ws.ok(&["get", "operators"])?.stdout);
    let bad = write(
        &ws,
        "bad.yaml",
        "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: team-a}\nspec:\n  routing:\n    maxAttempts: 2\n",
    )?;
    let r = ws.run(&["apply", "-f", &bad])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("bad.yaml:6:5: spec.routing.maxAttempts: unknown field `maxAttempts`"),
        "{}",
        r.stderr
    );
    // The third document names an account nobody has: the first two are not applied either.
    let third = write(
        &ws,
        "third.yaml",
        &format!(
            "{}---\napi_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {{name: team-c}}\n\
             spec:\n  accounts:\n    - account: nobody@example.com\n",
            text.replace("max_attempts: 2", "max_attempts: 4")
        ),
    )?;
    let r = ws.run(&["apply", "-f", &third])?;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("third.yaml:56:7: spec.accounts[0].account: no account"),
        "{}",
        r.stderr
    );
    let after = (logical_state(&ws)?, ws.ok(&["get", "operators"])?.stdout);
    assert!(after == before, "a refused file wrote");

    // Prune: the file without team-b and the oncall key.
    let smaller: String = text
        .split("---\n")
        .filter(|d| !d.contains("name: team-b"))
        .collect::<Vec<_>>()
        .join("---\n");
    let smaller = smaller
        .split("    - label: oncall")
        .next()
        .ok_or("split")?
        .to_owned()
        + "---\n"
        + text.split("---\n").last().ok_or("operator")?;
    let smaller = write(&ws, "smaller.yaml", &smaller)?;
    let dry = ws.ok(&["apply", "-f", &smaller, "--prune", "--dry-run"])?;
    for line in [
        "- key team-a/oncall: pruned (revoked)",
        "- pool team-b: pruned",
        "- pool seed: pruned",
    ] {
        assert!(dry.stdout.contains(line), "{line}:\n{}", dry.stdout);
    }
    ws.ok(&["apply", "-f", &smaller, "--prune"])?;
    let keys = ws.ok_json(&["key", "list", "--pool", "team-a"])?;
    let oncall = keys
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["label"] == "oncall"))
        .ok_or("oncall")?;
    assert_eq!(oncall["status"], "revoked");
    let pools = ws.ok_json(&["pool", "list"])?;
    let team_b = pools
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "team-b"))
        .ok_or("team-b is kept, archived")?;
    assert!(team_b["archived_at_ms"].is_i64(), "{team_b}");
    // The operator document names team-a only: with --prune, dana loses seed.
    let dana = ws.ok(&["get", "operators", "dana"])?.stdout;
    assert!(dana.ends_with("  pools:\n    - team-a\n"), "{dana}");
    // Accounts are never pruned.
    assert_eq!(
        ws.ok_json(&["account", "list"])?.as_array().map(Vec::len),
        Some(2)
    );
    Ok(())
}

async fn put(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    content_type: &str,
    body: String,
) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let resp = http
        .put(url)
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_put_and_get_round_trip() -> TestResult {
    let ws = workspace()?;
    let owner = ws.ok_json(&[
        "operator", "token", "create", "--label", "o", "--role", "owner",
    ])?["secret"]
        .as_str()
        .ok_or("owner token")?
        .to_owned();
    let text = std::fs::read_to_string(example())?;
    // Pools only: the operator document stays the CLI's here.
    let pools: String = text
        .split("---\n")
        .filter(|d| !d.contains("kind: Operator"))
        .collect::<Vec<_>>()
        .join("---\n");
    ws.ok(&["pool", "create", "team-a"])?;
    let admin = ws.ok_json(&[
        "operator", "token", "create", "--label", "a", "--role", "admin", "--pools", "team-a",
    ])?["secret"]
        .as_str()
        .ok_or("admin token")?
        .to_owned();
    let served = Served::start(&ws, &[])?;
    let base = format!("http://{}/api/v1/config", served.admin_addr()?);
    let http = reqwest::Client::new();

    let (code, dry) = put(
        &http,
        &format!("{base}?dry_run=true"),
        &owner,
        "application/yaml",
        pools.clone(),
    )
    .await?;
    assert_eq!(code, 200, "{dry}");
    assert_eq!(
        (dry["dry_run"].clone(), dry["changed"].clone()),
        (Value::Bool(true), Value::Bool(false))
    );
    let (code, applied) = put(&http, &base, &owner, "application/yaml", pools.clone()).await?;
    assert_eq!(code, 200, "{applied}");
    assert_eq!(
        applied["new_keys"].as_array().map(Vec::len),
        Some(3),
        "{applied}"
    );
    let (code, again) = put(&http, &base, &owner, "application/yaml", pools.clone()).await?;
    assert_eq!(
        (code, again["changed"].clone()),
        (200, Value::Bool(false)),
        "{again}"
    );

    // GET states it; PUT of what GET said (YAML and JSON) changes nothing, prune included.
    let resp = http
        .get(format!("{base}?kind=pools"))
        .bearer_auth(&owner)
        .send()
        .await?;
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/yaml")
    );
    let yaml = resp.text().await?;
    assert!(
        yaml.contains("name: team-a") && yaml.contains("label: oncall"),
        "{yaml}"
    );
    let (code, round) = put(
        &http,
        &format!("{base}?prune=true"),
        &owner,
        "application/yaml",
        yaml,
    )
    .await?;
    assert_eq!(
        (code, round["changed"].clone()),
        (200, Value::Bool(false)),
        "{round}"
    );
    let json = http
        .get(format!("{base}?format=json"))
        .bearer_auth(&owner)
        .send()
        .await?
        .text()
        .await?;
    let (code, round) = put(&http, &base, &owner, "application/json", json).await?;
    assert_eq!(
        (code, round["changed"].clone()),
        (200, Value::Bool(false)),
        "{round}"
    );

    // A bad document: 400 with the field path and its place; nothing applied.
    let bad = "api_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {name: team-a}\nspec:\n  routing: {max_attempts: 99}\n";
    let (code, e) = put(&http, &base, &owner, "application/yaml", bad.into()).await?;
    assert_eq!(code, 400, "{e}");
    assert_eq!(e["error"]["kind"], "invalid");
    assert_eq!(e["error"]["field"], "spec.routing.max_attempts");
    assert_eq!(
        (e["error"]["line"].clone(), e["error"]["column"].clone()),
        (Value::from(5), Value::from(13))
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("body:5:13: ")),
        "{e}"
    );
    let (code, _) = put(&http, &base, &owner, "text/plain", bad.into()).await?;
    assert_eq!(code, 415);

    // An admin of team-a: its pool yes, team-b (another tenant's) no.
    let team_a = pools
        .split("---\n")
        .find(|d| d.contains("name: team-a"))
        .ok_or("team-a")?
        .replace("max_attempts: 2", "max_attempts: 3");
    let (code, mine) = put(&http, &base, &admin, "application/yaml", team_a).await?;
    assert_eq!(
        (code, mine["changed"].clone()),
        (200, Value::Bool(true)),
        "{mine}"
    );
    let (code, theirs) = put(&http, &base, &admin, "application/yaml", pools).await?;
    assert_eq!(code, 403, "{theirs}");
    assert_eq!(theirs["error"]["field"], "metadata.name");
    served.stop()?;
    Ok(())
}
