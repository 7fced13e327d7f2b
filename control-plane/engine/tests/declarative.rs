//! Declarative apply (`ops::declarative`) against a real store: a file applies whole or not at
//! all, applying it twice changes nothing, `get` states what `apply` reads, prune removes what
//! a file no longer names (and never an account), and a principal applies only what it may
//! change. Against SQLite always, and against a throwaway PostgreSQL when its binaries exist.

mod support;

use codexmesh_engine::config::{Settings, SettingsFlags};
use codexmesh_engine::ops::declarative::{self, ExportKind, SourceFile};
use codexmesh_engine::ops::{ErrorKind, Ops};
use codexmesh_engine::snapshot;
use codexmesh_model::declarative::{self as docs, Body};
use codexmesh_model::declarative_plan::{Action, ApplyOptions};
use codexmesh_model::keys::hash_key;
use codexmesh_model::operators::{Access, Principal, Role};
use codexmesh_store::crypto::MasterKey;
use codexmesh_store::*;
use support::{creds, pg};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What `get` prints for it, field for field (so apply → get compares texts).
const TEAMS: &str = "\
---
api_version: codexmesh.dev/v1
kind: Pool
metadata:
  name: team-a
spec:
  routing:
    strategy: primary_first
    max_attempts: 2
    explain_routes: false
    primary_account: bob@example.com
    primary_threshold_percent: 90
    websockets: true
  accounts:
    - account: alice@example.com
      priority: 0
      weight: 1
    - account: bob@example.com
      priority: 1
      weight: 3
  keys:
    - label: ci
    - label: ops
      operator: true
      routing:
        strategy: round_robin
        max_attempts: 3
        explain_routes: true
        websockets: false
---
api_version: codexmesh.dev/v1
kind: Pool
metadata:
  name: team-b
spec:
  routing:
    strategy: quota_first
    max_attempts: 3
    explain_routes: false
    websockets: true
  accounts:
    - account: bob@example.com
      priority: 0
      weight: 1
  network:
    allowed_cidrs:
      - 10.0.0.0/8
      - 192.168.1.0/24
---
api_version: codexmesh.dev/v1
kind: Operator
metadata:
  name: eve
spec:
  role: admin
  pools:
    - team-a
";

fn file(name: &str, text: &str) -> Vec<SourceFile> {
    vec![SourceFile {
        name: name.into(),
        text: text.into(),
    }]
}

fn ops_for(store: &Store, dir: &std::path::Path) -> Result<Ops, Box<dyn std::error::Error>> {
    let flags = SettingsFlags {
        store: Some("sqlite::memory:".into()),
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    };
    let settings = Settings::resolve(&flags, &|_| None)?;
    Ok(Ops::with_store(
        settings,
        Actor::new("cli:test"),
        store.clone(),
    ))
}

async fn apply(
    ops: &Ops,
    text: &str,
    prune: bool,
    dry_run: bool,
) -> Result<declarative::Applied, codexmesh_engine::ops::OpsError> {
    Ok(declarative::apply(
        ops,
        &file("teams.yaml", text),
        ApplyOptions { prune },
        dry_run,
    )
    .await?
    .value)
}

fn count(a: &declarative::Applied, action: Action) -> usize {
    a.objects.iter().filter(|o| o.action == action).count()
}

async fn exercise(store: &Store, dir: &std::path::Path) -> TestResult {
    let actor = Actor::new("test");
    let key = MasterKey::generate()?;
    store.create_pool(&actor, "seed").await?;
    for (login, email) in [
        ("cg-alice", "alice@example.com"),
        ("cg-bob", "bob@example.com"),
    ] {
        store
            .import_account(&actor, "seed", None, &creds(login, email, login)?, &key)
            .await?;
    }
    store
        .create_operator(
            &actor,
            &NewOperator {
                name: "eve",
                role: Role::Admin,
                pools: &[],
                password_hash: None,
            },
        )
        .await?;
    let ops = ops_for(store, dir)?;

    // A dry run says what would happen and writes nothing.
    let before = store.revision().await?;
    let dry = apply(&ops, TEAMS, false, true).await?;
    assert!(dry.dry_run && dry.revision.is_none() && dry.new_keys.is_empty());
    assert_eq!(count(&dry, Action::Created), 7, "{:#?}", dry.objects);
    assert_eq!(store.revision().await?, before);
    assert!(store.pool_by_name("team-a").await.is_err());

    // Applied: everything at once, one revision.
    let applied = apply(&ops, TEAMS, false, false).await?;
    assert_eq!(applied.revision, Some(before + 1));
    assert_eq!(store.revision().await?, before + 1);
    assert_eq!(applied.new_keys.len(), 2);
    let keys = store.list_keys(Some("team-a")).await?;
    for k in &applied.new_keys {
        let stored = keys.iter().find(|x| x.id == k.key.id).ok_or("key stored")?;
        assert_eq!(
            stored.key_hash_hex,
            hex::encode(hash_key(k.secret.expose()))
        );
    }
    let eve = store.find_operator("eve").await?;
    assert_eq!(eve.pools, vec!["team-a".to_owned()]);
    let audit = store.recent_audit(50).await?;
    assert!(audit
        .iter()
        .any(|a| a.action == "key.create" && a.revision == before + 1));

    // The snapshot Envoy gets has it: routing, members with their priorities, the keys.
    let snap = snapshot::build(&store.snapshot_data().await?, &key, "t");
    let a = snap
        .pools
        .iter()
        .find(|p| p.name == "team-a")
        .ok_or("team-a in the snapshot")?;
    let routing = a.routing.as_ref().ok_or("routing")?;
    assert_eq!(routing.max_attempts, 2);
    assert!(a.allowed_cidrs.is_empty());
    let b = snap
        .pools
        .iter()
        .find(|p| p.name == "team-b")
        .ok_or("team-b in the snapshot")?;
    assert_eq!(b.allowed_cidrs, ["10.0.0.0/8", "192.168.1.0/24"]);
    assert_eq!(a.accounts.len(), 2);
    assert_eq!(a.keys.len(), 2);
    let ops_key = a.keys.iter().find(|k| k.label == "ops").ok_or("ops key")?;
    assert!(ops_key.operator && ops_key.routing_override.is_some());
    let secret = &applied
        .new_keys
        .iter()
        .find(|k| k.key.label == "ops")
        .ok_or("ops secret")?
        .secret;
    assert_eq!(ops_key.key_hash, hash_key(secret.expose()).to_vec());

    // Twice: no changes, no revision.
    let again = apply(&ops, TEAMS, false, false).await?;
    assert_eq!(again.revision, None);
    assert_eq!(count(&again, Action::Unchanged), again.objects.len());
    assert_eq!(store.revision().await?, before + 1);

    // get states exactly what was applied, and applying it changes nothing.
    let mut got = declarative::export(&ops, ExportKind::Pools, None)
        .await?
        .value;
    got.retain(|d| d.name != "seed");
    got.extend(
        declarative::export(&ops, ExportKind::Operators, Some("eve"))
            .await?
            .value,
    );
    assert_eq!(docs::to_yaml(&got), TEAMS);
    let seed = declarative::export(&ops, ExportKind::Pools, Some("seed"))
        .await?
        .value;
    let whole = format!("{}{}", docs::to_yaml(&seed), TEAMS);
    assert_eq!(apply(&ops, &whole, true, false).await?.revision, None);

    // A file whose third document is bad changes nothing, and says where.
    let bad = format!(
        "{TEAMS}---\napi_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {{name: team-c}}\n\
         ---\napi_version: codexmesh.dev/v1\nkind: Pool\nmetadata: {{name: team-d}}\nspec:\n  \
         accounts:\n    - account: nobody@example.com\n"
    )
    .replace("max_attempts: 2", "max_attempts: 1");
    let e = apply(&ops, &bad, false, false)
        .await
        .err()
        .ok_or("a bad file applied")?;
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert_eq!(e.field(), Some("spec.accounts[0].account"));
    assert!(
        e.to_string()
            .starts_with("teams.yaml:68:7: spec.accounts[0].account: no account"),
        "{e}"
    );
    assert_eq!(store.revision().await?, before + 1);
    assert!(store.pool_by_name("team-c").await.is_err());
    assert_eq!(store.pool_by_name("team-a").await?.routing.max_attempts, 2);

    // An admin applies its own pools only, never operators; a viewer nothing.
    let admin = ops.acting_as(
        Access {
            principal: Principal::Operator {
                id: eve.id.clone(),
                name: "eve".into(),
            },
            role: Role::Admin,
            pools: vec!["team-a".into()],
        },
        Some("127.0.0.1".into()),
    );
    let only_a = TEAMS
        .split("---\n")
        .find(|d| d.contains("name: team-a"))
        .ok_or("team-a document")?
        .replace("max_attempts: 2", "max_attempts: 4");
    let changed = apply(&admin, &only_a, false, false).await?;
    assert_eq!(changed.revision, Some(before + 2));
    for (text, kind) in [
        (TEAMS.to_owned(), ErrorKind::Forbidden),
        (
            "api_version: codexmesh.dev/v1\nkind: Operator\nmetadata: {name: eve}\nspec: {role: admin, pools: [team-a]}\n".to_owned(),
            ErrorKind::Forbidden,
        ),
    ] {
        let e = apply(&admin, &text, false, false)
            .await
            .err()
            .ok_or("an admin applied more than its pools")?;
        assert_eq!(e.kind(), kind, "{e}");
    }
    let viewer = ops.acting_as(
        Access {
            principal: Principal::Token {
                id: "t".into(),
                label: "ro".into(),
            },
            role: Role::Viewer,
            pools: vec!["team-a".into()],
        },
        None,
    );
    let e = apply(&viewer, &only_a, false, false)
        .await
        .err()
        .ok_or("a viewer applied")?;
    assert_eq!(e.kind(), ErrorKind::Forbidden);
    assert_eq!(store.revision().await?, before + 2);
    let refusals = store.recent_audit(10).await?;
    assert!(refusals
        .iter()
        .any(|a| a.action == "config.apply" && a.outcome == "forbidden"));

    // Prune: what the file no longer names goes; accounts stay.
    let smaller = only_a
        .replace(
            "    - account: bob@example.com\n      priority: 1\n      weight: 3\n",
            "",
        )
        .replace("    primary_account: bob@example.com\n", "")
        .replace("strategy: primary_first", "strategy: quota_first");
    let smaller = smaller
        .split("    - label: ops")
        .next()
        .ok_or("split")?
        .to_owned();
    let pruned = apply(&ops, &smaller, true, false).await?;
    let names: Vec<(String, Action)> = pruned
        .objects
        .iter()
        .filter(|o| o.action == Action::Pruned)
        .map(|o| (o.name.clone(), o.action))
        .collect();
    assert_eq!(
        names,
        vec![
            ("team-a/bob@example.com".to_owned(), Action::Pruned),
            ("team-a/ops".to_owned(), Action::Pruned),
            ("seed".to_owned(), Action::Pruned),
            ("team-b".to_owned(), Action::Pruned),
        ]
    );
    assert!(store.pool_by_name("team-b").await?.archived_at_ms.is_some());
    assert_eq!(store.list_accounts(None).await?.len(), 2);
    let ops_key = store
        .list_keys(Some("team-a"))
        .await?
        .into_iter()
        .find(|k| k.label == "ops")
        .ok_or("ops key kept as revoked")?;
    assert_eq!(ops_key.status, KeyStatus::Revoked);
    // Operators were not in the file: untouched.
    assert_eq!(store.find_operator("eve").await?.pools, vec!["team-a"]);

    // The whole file again: team-b restored, bob back, and a *new* ops key (the revoked one
    // stays revoked).
    let back = apply(&ops, TEAMS, false, false).await?;
    assert_eq!(back.new_keys.len(), 1);
    assert_ne!(back.new_keys[0].key.id, ops_key.id);
    let note = back
        .objects
        .iter()
        .find(|o| o.name == "team-a/ops")
        .and_then(|o| o.note.clone())
        .unwrap_or_default();
    assert!(note.contains("stays revoked"), "{note}");
    assert!(store.pool_by_name("team-b").await?.archived_at_ms.is_none());
    let doc = declarative::export(&ops, ExportKind::Pools, Some("team-a"))
        .await?
        .value;
    let Body::Pool(spec) = &doc[0].body else {
        return Err("not a pool".into());
    };
    assert_eq!(spec.accounts.len(), 2);
    Ok(())
}

#[tokio::test]
async fn sqlite_apply() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite://{}/cm.db", dir.path().display())).await?;
    exercise(&store, dir.path()).await
}

#[tokio::test]
async fn postgres_apply() -> TestResult {
    let Some(temp) = pg::TempPostgres::start().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let url = support::empty_database(&temp, "apply").await?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&url).await?;
    let r = exercise(&store, dir.path()).await;
    store.close().await;
    r
}
