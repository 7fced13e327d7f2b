//! Every `--json` output of the CLI, as golden files (`snapshots/json_output__*.snap`): what
//! scripts and the admin API's users read, reviewed as diffs when it changes.
//!
//! One scenario drives every command that prints JSON against the simulator (token endpoint and
//! device login included) and records each output under the command's name. Values that differ
//! from run to run are replaced before the comparison: ids (`acc_…`, `pool_…`, `key_…`, numbered
//! by first appearance), the raw key (`<raw key>`), times (`*_ms`, `*_at`, `*_unix`,
//! `resets_in_secs` fields: `<time>` when set), the temp dir (`<dir>`), the simulator's address
//! (`<sim>`), the simulator's made-up user ids (`<user>`) and JWT-shaped strings (`<jwt>`).

use codexmesh_test_kit::source::StableIds;
use codexmesh_test_kit::{Cli, Sim, TestResult, Workspace};
use serde_json::{json, Map, Value};

struct Redactor {
    ids: StableIds,
    dir: String,
    sim: String,
}

impl Redactor {
    fn string(&mut self, s: &str) -> String {
        if let Some(id) = self.ids.id(s) {
            return id;
        }
        if s.starts_with("cmk_") && s.len() == 44 {
            return "<raw key>".to_owned();
        }
        if s.starts_with("eyJ") && s.matches('.').count() == 2 {
            return "<jwt>".to_owned();
        }
        s.replace(&self.dir, "<dir>").replace(&self.sim, "<sim>")
    }

    fn value(&mut self, key: Option<&str>, v: &Value) -> Value {
        let timed = key.is_some_and(|k| {
            k.ends_with("_ms")
                || k.ends_with("_at")
                || k.ends_with("_unix")
                || k == "resets_in_secs"
        });
        match v {
            Value::Null => Value::Null,
            // The simulator makes up a user id per login.
            Value::String(_) if key == Some("chatgpt_user_id") => json!("<user>"),
            _ if timed && !v.is_object() && !v.is_array() => json!("<time>"),
            Value::String(s) => Value::String(self.string(s)),
            Value::Array(items) => {
                Value::Array(items.iter().map(|i| self.value(None, i)).collect())
            }
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    out.insert(k.clone(), self.value(Some(k), v));
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_output_matches_its_golden_file() -> TestResult {
    let sim = Sim::start()?;
    let mut ws = Workspace::new()?;
    ws.extra_args = sim.cp_args();
    let mut r = Redactor {
        ids: StableIds::default(),
        dir: ws.path().display().to_string(),
        sim: sim.root_url(),
    };
    let mut golden = |name: &str, out: Value| {
        let redacted = r.value(None, &out);
        let text = serde_json::to_string_pretty(&redacted).unwrap_or_default();
        insta::assert_snapshot!(name, text);
    };

    golden("pool_create", ws.ok_json(&["pool", "create", "team"])?);
    ws.ok(&["pool", "create", "second"])?;
    golden(
        "pool_set_routing",
        ws.ok_json(&[
            "pool",
            "set-routing",
            "team",
            "--strategy",
            "priority_order",
            "--max-attempts",
            "2",
        ])?,
    );

    let alice = sim
        .create_account(
            json!({"account_id": "chatgpt-alice", "email": "alice@example.test", "plan": "plus"}),
        )
        .await?;
    let bob = sim
        .create_account(
            json!({"account_id": "chatgpt-bob", "email": "bob@example.test", "plan": "pro"}),
        )
        .await?;
    golden(
        "account_import",
        ws.import_auth(
            "alice.json",
            &alice["auth_json"].to_string(),
            "team",
            Some("alice"),
        )?,
    );
    ws.import_auth(
        "bob.json",
        &bob["auth_json"].to_string(),
        "team",
        Some("bob"),
    )?;
    golden(
        "account_set",
        ws.ok_json(&["account", "set", "bob", "--priority", "1", "--weight", "3"])?,
    );
    golden(
        "account_join",
        ws.ok_json(&[
            "account",
            "join",
            "alice",
            "--pool",
            "second",
            "--priority",
            "4",
        ])?,
    );
    golden("account_pause", ws.ok_json(&["account", "pause", "bob"])?);
    golden("account_resume", ws.ok_json(&["account", "resume", "bob"])?);
    golden(
        "account_refresh",
        ws.ok_json(&["account", "refresh", "alice"])?,
    );
    golden("account_list", ws.ok_json(&["account", "list"])?);

    golden(
        "key_create",
        ws.ok_json(&["key", "create", "--pool", "team", "--name", "ci"])?,
    );
    ws.ok_json(&[
        "key",
        "create",
        "--pool",
        "second",
        "--name",
        "ops",
        "--operator",
    ])?;
    golden(
        "key_set_routing",
        ws.ok_json(&["key", "set-routing", "ci", "--strategy", "round_robin"])?,
    );
    golden("key_revoke", ws.ok_json(&["key", "revoke", "ops"])?);
    golden("key_list", ws.ok_json(&["key", "list"])?);
    golden("pool_list", ws.ok_json(&["pool", "list"])?);
    golden("status", ws.ok_json(&["status"])?);
    golden("requests", ws.ok_json(&["requests"])?);

    std::fs::create_dir_all(ws.path().join("out"))?;
    let out = ws.path().join("out/bob.json");
    golden(
        "account_export",
        ws.ok_json(&[
            "account",
            "export",
            "bob",
            "--out",
            &out.display().to_string(),
            "--keep",
        ])?,
    );
    golden(
        "account_remove_from_one_pool",
        ws.ok_json(&["account", "remove", "alice", "--pool", "second"])?,
    );
    golden("account_remove", ws.ok_json(&["account", "remove", "bob"])?);

    sim.behavior(json!({
        "device_auto_approve_after_polls": 1,
        "device_poll_interval_secs": 0,
        "device_auto_approve_as": {"account_id": "chatgpt-dev", "plan": "pro", "email": "dev@example.test"}
    }))
    .await?;
    golden(
        "account_login",
        ws.ok_json(&["account", "login", "--pool", "team"])?,
    );

    let bootstrap = ws.path().join("envoy.yaml");
    golden(
        "envoy_bootstrap",
        ws.ok_json(&[
            "envoy-bootstrap",
            "--out",
            &bootstrap.display().to_string(),
            "--grpc-listen",
            "127.0.0.1:18090",
        ])?,
    );
    Ok(())
}
