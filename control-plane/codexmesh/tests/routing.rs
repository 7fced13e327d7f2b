//! Routing commands (`pool set-routing`, `account set`, `key set-routing`) driven as a user
//! would: their JSON, and bad values refused with exit 1, named, and nothing written.

use codexmesh_test_kit::{logical_state, Cli, Login, TestResult, Workspace};
use serde_json::{json, Value};

/// Keys of a JSON object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

const ROUTING_FIELDS: &[&str] = &[
    "strategy",
    "max_attempts",
    "explain_routes",
    "primary_account_id",
    "primary_threshold_percent",
    "secondary_threshold_percent",
    "circuit_failures",
    "circuit_open_ms",
    "cooldown_max_ms",
    "websockets",
];

/// A workspace with pool `main` (accounts `a`, `b`), pool `other` (account `s`) and a key
/// `k1` of `main`; the accounts and the key as their commands printed them.
struct Fixture {
    ws: Workspace,
    a: Value,
    b: Value,
    s: Value,
    key: Value,
}

fn setup() -> Result<Fixture, Box<dyn std::error::Error>> {
    let ws = Workspace::new()?;
    ws.ok(&["pool", "create", "main"])?;
    ws.ok(&["pool", "create", "other"])?;
    let mut ids = Vec::new();
    for (pool, label, n) in [("main", "a", "1"), ("main", "b", "2"), ("other", "s", "3")] {
        let login = Login::new(
            &format!("acct-{n}"),
            &format!("{label}@example.com"),
            "plus",
            n,
        );
        let r = ws.import_auth(
            &format!("{label}.json"),
            &login.auth_json(),
            pool,
            Some(label),
        )?;
        ids.push(r["account"].clone());
    }
    let key = ws.ok_json(&["key", "create", "--pool", "main", "--name", "k1"])?;
    let s = ids.pop().ok_or("s")?;
    let b = ids.pop().ok_or("b")?;
    let a = ids.pop().ok_or("a")?;
    Ok(Fixture { ws, a, b, s, key })
}

#[test]
fn routing_commands_print_the_documented_json() -> TestResult {
    let Fixture { ws, a, b, key, .. } = setup()?;
    let created = ws.ok_json(&["pool", "create", "fresh"])?;
    assert_eq!(created["strategy"], "quota_first");
    assert_eq!(created["routing"]["strategy"], "quota_first");
    assert_eq!(keys(&created["routing"]), sorted(ROUTING_FIELDS));

    // No flags: the effective routing with every default filled in, nothing changed.
    let before = logical_state(&ws)?;
    let shown = ws.ok_json(&["pool", "set-routing", "main"])?;
    assert_eq!(
        shown,
        json!({"pool": "main", "strategy": "quota_first", "max_attempts": 3,
               "explain_routes": false, "primary_account_id": null,
               "primary_threshold_percent": 95.0, "secondary_threshold_percent": 99.0,
               "circuit_failures": 3, "circuit_open_ms": 60000, "cooldown_max_ms": 1800000,
               "websockets": true})
    );
    assert_eq!(logical_state(&ws)?, before);

    // Only the given flags change; the primary is named by label and shown by id.
    let set = ws.ok_json(&[
        "pool",
        "set-routing",
        "main",
        "--strategy",
        "primary_first",
        "--primary",
        "b",
        "--max-attempts",
        "4",
        "--explain",
        "true",
        "--primary-threshold",
        "90",
        "--secondary-threshold",
        "97.5",
        "--circuit-failures",
        "5",
        "--circuit-open-ms",
        "5000",
        "--cooldown-max-ms",
        "600000",
        "--websockets",
        "off",
    ])?;
    assert_eq!(
        set,
        json!({"pool": "main", "strategy": "primary_first", "max_attempts": 4,
               "explain_routes": true, "primary_account_id": b["id"],
               "primary_threshold_percent": 90.0, "secondary_threshold_percent": 97.5,
               "circuit_failures": 5, "circuit_open_ms": 5000, "cooldown_max_ms": 600000,
               "websockets": false})
    );
    let again = ws.ok_json(&["pool", "set-routing", "main", "--max-attempts", "2"])?;
    assert_eq!(again["max_attempts"], 2);
    assert_eq!(again["strategy"], "primary_first");
    assert_eq!(again["primary_account_id"], b["id"]);
    // "default" and "none" put settings back.
    let reset = ws.ok_json(&[
        "pool",
        "set-routing",
        "main",
        "--primary",
        "none",
        "--circuit-failures",
        "default",
    ])?;
    assert_eq!(reset["primary_account_id"], Value::Null);
    assert_eq!(reset["circuit_failures"], 3);
    assert_eq!(reset["circuit_open_ms"], 5000);

    // status: the strategy and the routing object per pool.
    let status = ws.ok_json(&["status"])?;
    let main = status["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "main"))
        .ok_or("main in status")?;
    assert_eq!(main["strategy"], "primary_first");
    assert_eq!(main["routing"]["max_attempts"], 2);
    assert_eq!(keys(&main["routing"]), sorted(ROUTING_FIELDS));
    let text = ws.ok(&["status"])?.stdout;
    assert!(text.contains("pool main: strategy primary_first"), "{text}");
    let list = ws.ok_json(&["pool", "list"])?;
    let listed_main = list
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "main"))
        .ok_or("main in pool list")?;
    assert_eq!(listed_main["routing"]["strategy"], "primary_first");

    // account set: the account object, as account list prints it.
    let acc = ws.ok_json(&["account", "set", "a", "--priority", "7", "--weight", "3"])?;
    assert_eq!(acc["id"], a["id"]);
    assert_eq!(
        (acc["priority"].clone(), acc["weight"].clone()),
        (json!(7), json!(3))
    );
    let listed = ws.ok_json(&["account", "list", "--pool", "main"])?;
    let row = listed
        .as_array()
        .and_then(|l| l.iter().find(|x| x["id"] == a["id"]))
        .ok_or("a in list")?;
    assert_eq!(keys(&acc), keys(row));
    let only_weight = ws.ok_json(&[
        "account",
        "set",
        acc["id"].as_str().unwrap_or_default(),
        "--weight",
        "1000",
    ])?;
    assert_eq!(
        (
            only_weight["priority"].clone(),
            only_weight["weight"].clone()
        ),
        (json!(7), json!(1000))
    );

    // key set-routing: custom starts from the pool's current settings.
    let kid = key["id"].as_str().ok_or("key id")?;
    let listed = ws.ok_json(&["key", "list"])?;
    assert_eq!(listed[0]["routing_mode"], "inherit");
    let inherit_view = ws.ok_json(&["key", "set-routing", kid])?;
    assert_eq!(inherit_view["mode"], "inherit");
    assert_eq!(inherit_view["max_attempts"], 2);
    let custom = ws.ok_json(&["key", "set-routing", "k1", "--strategy", "round_robin"])?;
    let mut expected = reset.clone();
    if let Some(o) = expected.as_object_mut() {
        o.remove("pool");
        o.insert("max_attempts".into(), json!(2));
        o.insert("strategy".into(), json!("round_robin"));
        o.insert("key".into(), json!(kid));
        o.insert("label".into(), json!("k1"));
        o.insert("pool".into(), json!("main"));
        o.insert("mode".into(), json!("custom"));
    }
    assert_eq!(custom, expected);
    let listed = ws.ok_json(&["key", "list"])?;
    assert_eq!(listed[0]["routing_mode"], "custom");
    assert_eq!(listed[0]["routing_override"]["strategy"], "round_robin");
    // The pool moves on; the custom key keeps its copy.
    ws.ok(&["pool", "set-routing", "main", "--max-attempts", "6"])?;
    let still = ws.ok_json(&["key", "set-routing", kid])?;
    assert_eq!(
        (still["mode"].clone(), still["max_attempts"].clone()),
        (json!("custom"), json!(2))
    );
    // --inherit: the pool's settings again.
    let back = ws.ok_json(&["key", "set-routing", kid, "--inherit"])?;
    assert_eq!(back["mode"], "inherit");
    assert_eq!(back["strategy"], "primary_first");
    assert_eq!(back["max_attempts"], 6);
    assert_eq!(ws.ok_json(&["key", "list"])?[0]["routing_mode"], "inherit");
    let text = ws.ok(&["key", "list"])?.stdout;
    assert!(
        text.contains("ROUTING") && text.contains("inherit"),
        "{text}"
    );
    Ok(())
}

#[test]
fn bad_routing_values_exit_1_name_the_flag_and_change_nothing() -> TestResult {
    let Fixture { ws, s, key, .. } = setup()?;
    let kid = key["id"].as_str().ok_or("key id")?.to_owned();
    let s_id = s["id"].as_str().ok_or("s id")?.to_owned();
    let before = logical_state(&ws)?;
    let pool_cases: &[(&[&str], &str)] = &[
        (&["--strategy", "fastest"], "--strategy"),
        (&["--max-attempts", "0"], "--max-attempts"),
        (&["--max-attempts", "11"], "--max-attempts"),
        (&["--max-attempts", "-1"], "--max-attempts"),
        (&["--max-attempts", "two"], "--max-attempts"),
        (&["--explain", "yes"], "--explain"),
        (&["--primary", "nobody"], "--primary"),
        // An account of another pool, by label and by id.
        (&["--primary", "s"], "--primary"),
        (&["--primary", &s_id], "--primary"),
        (&["--primary-threshold", "0"], "--primary-threshold"),
        (&["--primary-threshold", "101"], "--primary-threshold"),
        (&["--primary-threshold", "nan"], "--primary-threshold"),
        (&["--secondary-threshold", "-3"], "--secondary-threshold"),
        (&["--circuit-failures", "0"], "--circuit-failures"),
        (&["--circuit-open-ms", "999"], "--circuit-open-ms"),
        (&["--cooldown-max-ms", "5s"], "--cooldown-max-ms"),
        // One bad flag among good ones: nothing at all is applied.
        (
            &["--strategy", "round_robin", "--max-attempts", "99"],
            "--max-attempts",
        ),
    ];
    for (args, flag) in pool_cases {
        for target in [
            ["pool", "set-routing", "main"],
            ["key", "set-routing", kid.as_str()],
        ] {
            let mut all: Vec<&str> = target.to_vec();
            all.extend_from_slice(args);
            let r = ws.run(&all)?;
            assert_eq!(r.code, 1, "{all:?}: {}", r.stderr);
            assert!(
                r.stderr.contains(flag),
                "{all:?} should name {flag}: {}",
                r.stderr
            );
            assert!(r.stdout.is_empty(), "{all:?}: {}", r.stdout);
        }
    }
    let other_cases: &[(&[&str], &str)] = &[
        (&["account", "set", "a", "--weight", "0"], "--weight"),
        (&["account", "set", "a", "--weight", "1001"], "--weight"),
        (&["account", "set", "a", "--weight", "x"], "--weight"),
        (&["account", "set", "a", "--priority", "-1"], "--priority"),
        (&["account", "set", "a", "--priority", "1.5"], "--priority"),
        (
            &["account", "set", "a", "--priority", "2", "--weight", "0"],
            "--weight",
        ),
        (&["account", "set", "nobody", "--weight", "2"], "nobody"),
        (
            &[
                "key",
                "set-routing",
                &kid,
                "--inherit",
                "--strategy",
                "round_robin",
            ],
            "--inherit",
        ),
        (
            &["key", "set-routing", "no-key", "--strategy", "round_robin"],
            "no-key",
        ),
        (
            &["pool", "set-routing", "nope", "--strategy", "round_robin"],
            "nope",
        ),
    ];
    for (args, needle) in other_cases {
        let r = ws.run(args)?;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(needle),
            "{args:?} should name {needle}: {}",
            r.stderr
        );
    }
    assert_eq!(
        logical_state(&ws)?,
        before,
        "a refused command wrote something"
    );
    Ok(())
}
